//! Helpers every policy needs: health and capability checks, price and
//! speed ordering, seeded randomness and stable hashing.

use crate::{Backend, CircuitState, Request, Role};

/// Questions about a backend.
pub trait BackendExt {
    /// The circuit is not open: the router will send it traffic.
    fn is_healthy(&self) -> bool;
    /// The operator gave the backend this tag (such as `private`).
    fn has_tag(&self, tag: &str) -> bool;
    /// The backend has every capability the request needs (vision for
    /// images, tools, JSON mode, streaming) and its context window holds the
    /// input plus the requested output.
    fn can_serve(&self, request: &Request) -> bool;
    /// Estimated price of the request on this backend, in US dollars. Output
    /// is counted at `max_output_tokens`, or 256 tokens when unset.
    fn estimated_cost(&self, request: &Request) -> f64;
}

impl BackendExt for Backend {
    fn is_healthy(&self) -> bool {
        self.stats.circuit != CircuitState::Open
    }

    fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    fn can_serve(&self, request: &Request) -> bool {
        let caps = &self.capabilities;
        let needed_tokens = u64::from(request.input_tokens) + u64::from(request.max_output_tokens.unwrap_or(0));
        (caps.vision || !request.has_images())
            && (caps.tools || request.tools.is_empty())
            && (caps.json_mode || !request.json_mode)
            && (caps.stream || !request.stream)
            && needed_tokens <= u64::from(self.context_window)
    }

    fn estimated_cost(&self, request: &Request) -> f64 {
        let output = request.max_output_tokens.unwrap_or(256);
        (f64::from(request.input_tokens) * self.input_price + f64::from(output) * self.output_price) / 1e6
    }
}

/// Questions about a request.
pub trait RequestExt {
    /// The value of tag `key` (lower-case), from request metadata or an
    /// `x-switchyard-<key>` header.
    fn tag(&self, key: &str) -> Option<&str>;
    /// Some message carries an image.
    fn has_images(&self) -> bool;
    /// Some message carries audio.
    fn has_audio(&self) -> bool;
    /// The text of the newest user message (possibly cut, see `text-bytes`).
    fn last_user_text(&self) -> &str;
    /// Some text of the request is hidden from the policy: cut to the
    /// policy's text budget, or in older messages the router did not pass
    /// (past `view_max_messages`).
    fn is_text_cut(&self) -> bool;
    /// How many messages the client sent; more than `messages.len()` when
    /// the router passed only the newest.
    fn message_count(&self) -> usize;
}

impl RequestExt for Request {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }

    fn has_images(&self) -> bool {
        self.messages.iter().any(|m| m.has_image)
    }

    fn has_audio(&self) -> bool {
        self.messages.iter().any(|m| m.has_audio)
    }

    fn last_user_text(&self) -> &str {
        self.messages.iter().rev().find(|m| m.role == Role::User).map_or("", |m| m.text.as_str())
    }

    fn is_text_cut(&self) -> bool {
        let seen_bytes: u64 = self.messages.iter().map(|m| u64::from(m.text_bytes)).sum();
        seen_bytes < self.total_text_bytes || self.messages.iter().any(|m| (m.text.len() as u64) < u64::from(m.text_bytes))
    }

    fn message_count(&self) -> usize {
        self.tag("switchyard.message-count").and_then(|n| n.parse().ok()).unwrap_or(self.messages.len())
    }
}

/// The cheapest backend for `request` among `backends`.
pub fn cheapest<'a>(backends: impl IntoIterator<Item = &'a Backend>, request: &Request) -> Option<&'a Backend> {
    backends.into_iter().min_by(|a, b| a.estimated_cost(request).total_cmp(&b.estimated_cost(request)))
}

/// Orders `backends` for trying: healthy before open circuits, then by
/// estimated cost for `request`; equal costs keep their order.
pub fn rank_by_cost<'a>(mut backends: Vec<&'a Backend>, request: &Request) -> Vec<&'a Backend> {
    backends.sort_by(|a, b| (!a.is_healthy()).cmp(&!b.is_healthy()).then(a.estimated_cost(request).total_cmp(&b.estimated_cost(request))));
    backends
}

/// The backend with the lowest recent median latency; backends without
/// measurements yet count as fastest, so they get tried.
pub fn fastest<'a>(backends: impl IntoIterator<Item = &'a Backend>) -> Option<&'a Backend> {
    backends.into_iter().min_by(|a, b| a.stats.latency_p50_ms.total_cmp(&b.stats.latency_p50_ms))
}

/// A small deterministic random number generator (SplitMix64), seeded from
/// `request.seed` so that decisions can be replayed.
#[derive(Debug, Clone)]
pub struct SeedRng(u64);

impl SeedRng {
    /// A generator for this seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float uniformly in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks an index with probability proportional to its weight, using `seed`.
/// Negative and non-finite weights count as zero; `None` when no weight is
/// positive.
pub fn weighted_choice(seed: u64, weights: &[f64]) -> Option<usize> {
    let usable = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
    let total: f64 = weights.iter().map(|&w| usable(w)).sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = SeedRng::new(seed).next_f64() * total;
    let mut last_positive = None;
    for (i, &w) in weights.iter().enumerate() {
        let w = usable(w);
        if w > 0.0 {
            if point < w {
                return Some(i);
            }
            point -= w;
            last_positive = Some(i);
        }
    }
    last_positive // Rounding left `point` just past the end.
}

/// A stable bucket in `0..buckets` for `key` (such as a user id), for sticky
/// A/B splits: FNV-1a 64 of the UTF-8 bytes, modulo `buckets`. The same
/// algorithm is easy to write in any language, so policies in Python or
/// JavaScript can bucket identically. `buckets` of 0 gives 0.
pub fn hash_bucket(key: &str, buckets: u32) -> u32 {
    if buckets == 0 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(buckets)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(hash_bucket("", u32::MAX), (0xcbf2_9ce4_8422_2325u64 % u64::from(u32::MAX)) as u32);
        assert_eq!(hash_bucket("a", u32::MAX), (0xaf63_dc4c_8601_ec8cu64 % u64::from(u32::MAX)) as u32);
        assert_eq!(hash_bucket("foobar", u32::MAX), (0x8594_4171_f739_67e8u64 % u64::from(u32::MAX)) as u32);
        assert_eq!(hash_bucket("anything", 0), 0);
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let weights = [1.0, 0.0, 3.0, f64::NAN, -2.0];
        let mut counts = [0u32; 5];
        for seed in 0..20_000u64 {
            counts[weighted_choice(seed.wrapping_mul(0x2545_F491_4F6C_DD1D), &weights).unwrap()] += 1;
        }
        assert_eq!((counts[1], counts[3], counts[4]), (0, 0, 0));
        let share = f64::from(counts[2]) / 20_000.0;
        assert!((0.72..0.78).contains(&share), "share of weight 3 of 4: {share}");
        assert_eq!(weighted_choice(1, &[0.0, -1.0]), None);
        assert_eq!(weighted_choice(1, &[]), None);
    }

    #[test]
    fn seed_rng_is_deterministic() {
        let (mut a, mut b) = (SeedRng::new(7), SeedRng::new(7));
        assert_eq!((a.next_u64(), a.next_u64()), (b.next_u64(), b.next_u64()));
        assert_ne!(SeedRng::new(7).next_u64(), SeedRng::new(8).next_u64());
        assert!((0.0..1.0).contains(&SeedRng::new(u64::MAX).next_f64()));
    }
}
