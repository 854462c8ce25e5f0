//! `sticky-session`: a conversation keeps going to the same backend while
//! that backend stays healthy, so the provider's prompt cache keeps
//! serving its prefix. No state: the backend is chosen by rendezvous
//! (highest-random-weight) hashing of a session key over the healthy
//! backends that can serve the request, so when one backend fails only the
//! sessions it had move (each to its next-highest backend), and they come
//! back when it recovers.
//!
//! The session key: the `session` tag (the `x-switchyard-session` header
//! or `metadata.session`), else the caller's `user`, else a hash of the
//! conversation's opening messages (the first system and user text, which
//! stay the same as the conversation grows). Not the client key: one key
//! often serves a whole application, which would then stick to one backend.
//!
//! Config (all optional): `max_targets` (3), `require_tag`, `opening_bytes`
//! (512: how much of the opening messages makes the key).

use serde::Deserialize;
use switchyard_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    max_targets: usize,
    require_tag: Option<String>,
    opening_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_targets: 3, require_tag: None, opening_bytes: 512 }
    }
}

struct StickySession {
    config: Config,
}

impl Policy for StickySession {
    // It reads no live stats but the circuits.
    const STATS: StatsNeeded = StatsNeeded::Circuits;

    fn init(config: &str, _backends: &[Backend]) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        if config.max_targets == 0 {
            return Err("invalid config: `max_targets` must be at least 1".into());
        }
        Ok(Self { config })
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        let candidates: Vec<&Backend> = backends
            .iter()
            .filter(|b| b.can_serve(request) && b.is_healthy())
            .filter(|b| self.config.require_tag.as_deref().is_none_or(|tag| b.has_tag(tag)))
            .collect();
        if candidates.is_empty() {
            return reject(503, "no healthy backend can serve this request");
        }
        let (key, source) = self.session_key(request);
        let mut ranked: Vec<(u64, &Backend)> = candidates.into_iter().map(|b| (fnv1a(&[key.as_bytes(), b"\0", b.name.as_bytes()]), b)).collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let chosen: Vec<&Backend> = ranked.into_iter().map(|(_, b)| b).collect();
        route(chosen).limit(self.config.max_targets).label("reason", "sticky").label("session", source).into()
    }
}

impl StickySession {
    /// The session key and where it came from.
    fn session_key(&self, request: &Request) -> (String, &'static str) {
        if let Some(session) = request.tag("session") {
            return (format!("s:{session}"), "tag");
        }
        if let Some(user) = request.caller.user.as_deref() {
            return (format!("u:{user}"), "user");
        }
        let mut opening = String::new();
        for role in [Role::System, Role::User] {
            if let Some(m) = request.messages.iter().find(|m| m.role == role) {
                opening.push_str(&m.text);
                opening.push('\u{1f}');
            }
        }
        let cut = opening.char_indices().map(|(i, _)| i).take_while(|i| *i <= self.config.opening_bytes).last().unwrap_or(0);
        (format!("o:{:016x}", fnv1a(&[&opening.as_bytes()[..cut]])), "opening")
    }
}

/// FNV-1a 64 over `parts`, then a final mix so that close keys spread.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

switchyard_policy::export_policy!(StickySession);
