//! A contract 0.2 policy for the tests: it asks for outcomes and counts
//! them in policy state (`outcomes`, and `served:<backend>`), and routes to
//! the first backend whose circuit is not open with the labels
//! `seen=<outcomes counted so far>` and `surface=<the request's surface>`.
//! The tag `cache` becomes the label `cache` (a policy skipping the
//! response cache) and the router's `switchyard.budget-used` the label
//! `budget` (what the policy saw of the caller's budget).
//! The request's model picks misbehaviour in `observe`: `observe-trap`
//! panics there, `observe-loop` spins until its fuel runs out; the request
//! itself is served either way.

use switchyard_policy::prelude::*;
use switchyard_policy::CircuitState;

struct Observer;

impl Policy for Observer {
    const OBSERVES: bool = true;

    fn init(_config: &str, _backends: &[Backend]) -> Result<Self, String> {
        Ok(Observer)
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        let seen = state::get("outcomes").and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map_or(0, i64::from_le_bytes);
        let Some(first) = backends.iter().find(|b| b.stats.circuit != CircuitState::Open) else {
            return reject(503, "no backend with a closed circuit");
        };
        if request.model == "state-bounds" {
            // Past the bounds a write fails with the reason; within them it holds.
            let big = state::set("big", &vec![0; 64 * 1024 + 1], None).is_err();
            let fits = state::set("fits", &vec![1; 64 * 1024], Some(60_000)).is_ok() && state::get("fits").map(|v| v.len()) == Some(64 * 1024);
            let counter = state::set("text", b"not a counter", None).is_ok() && state::add("text", 1).is_err();
            return route([first]).label("bounds", &format!("{big}/{fits}/{counter}")).into();
        }
        let mut decision = route([first])
            .label("seen", &seen.to_string())
            .label("surface", surface(request.surface))
            .label("mode", &request.model);
        for tag in &request.tags {
            match tag.key.as_str() {
                "cache" => decision = decision.label("cache", &tag.value),
                "switchyard.budget-used" => decision = decision.label("budget", &tag.value),
                _ => {}
            }
        }
        decision.into()
    }

    fn observe(&self, outcome: &Outcome) {
        let mode = outcome.labels.iter().find(|t| t.key == "mode").map(|t| t.value.as_str());
        match mode {
            Some("observe-trap") => panic!("observer panics in observe on purpose"),
            Some("observe-loop") => loop {
                std::hint::black_box(());
            },
            _ => {}
        }
        let _ = state::add("outcomes", 1);
        if let Some(backend) = &outcome.backend {
            let _ = state::add(&format!("served:{backend}"), 1);
        }
    }
}

fn surface(surface: ApiSurface) -> &'static str {
    match surface {
        ApiSurface::Chat => "chat",
        ApiSurface::Completion => "completion",
        ApiSurface::Embeddings => "embeddings",
        ApiSurface::Messages => "messages",
        ApiSurface::Responses => "responses",
    }
}

switchyard_policy::export_policy!(Observer);
