//! `bandit`: Thompson sampling over the backends that can serve a request.
//! Each backend's reward is a Beta distribution kept in policy state (so all
//! instances learn together and the learning survives reloads); every
//! request draws one sample per backend (from the request's seed: a
//! decision replays exactly given the same state) and tries them in the
//! order of their samples. After the answer, `observe` scores what the
//! first target did and adds it to that backend's Beta.
//!
//! The reward of one outcome, from 0 to 1: `success` (the first target
//! answered without a 5xx, and a stream ended well), less `latency_weight`
//! × how far its latency went past `latency_target_ms`, less `cost_weight`
//! × how far its cost went past `cost_target_usd` (each capped at 1 and the
//! reward at 0).
//!
//! Config (all optional): `latency_target_ms` (2000), `latency_weight`
//! (0.2), `cost_target_usd` (0.01), `cost_weight` (0.1), `max_targets` (3),
//! `require_tag`, `decay` (0.999: older outcomes weigh less, so the bandit
//! follows a backend that gets worse or better).

use serde::Deserialize;
use switchyard_policy::prelude::*;

/// Beta parameters are kept in state as integers, in thousandths.
const SCALE: f64 = 1000.0;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    latency_target_ms: f64,
    latency_weight: f64,
    cost_target_usd: f64,
    cost_weight: f64,
    max_targets: usize,
    require_tag: Option<String>,
    decay: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            latency_target_ms: 2000.0,
            latency_weight: 0.2,
            cost_target_usd: 0.01,
            cost_weight: 0.1,
            max_targets: 3,
            require_tag: None,
            decay: 0.999,
        }
    }
}

struct Bandit {
    config: Config,
}

impl Policy for Bandit {
    // It reads no live stats but the circuits.
    const STATS: StatsNeeded = StatsNeeded::Circuits;

    const OBSERVES: bool = true;

    fn init(config: &str, _backends: &[Backend]) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        if config.max_targets == 0 {
            return Err("invalid config: `max_targets` must be at least 1".into());
        }
        if !(0.5..=1.0).contains(&config.decay) {
            return Err(format!("invalid config: `decay` must be between 0.5 and 1, not {}", config.decay));
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
        let mut rng = SeedRng::new(request.seed);
        let mut drawn: Vec<(f64, &Backend)> = candidates
            .into_iter()
            .map(|b| {
                let (alpha, beta) = beta_of(&b.name);
                (sample_beta(&mut rng, alpha, beta), b)
            })
            .collect();
        drawn.sort_by(|a, b| b.0.total_cmp(&a.0));
        let chosen: Vec<&Backend> = drawn.iter().map(|(_, b)| *b).collect();
        let arm = chosen[0].name.clone();
        route(chosen).limit(self.config.max_targets).label("reason", "thompson").label("arm", &arm).into()
    }

    fn observe(&self, outcome: &Outcome) {
        // Only the first target's own outcome teaches about it.
        let Some(first) = outcome.labels.iter().find(|t| t.key == "arm").map(|t| t.value.clone()) else { return };
        let answered_first = outcome.served_by == Some(0);
        let success = answered_first && outcome.status < 500;
        let mut reward = if success { 1.0 } else { 0.0 };
        if success {
            let c = &self.config;
            reward -= c.latency_weight * over(f64::from(outcome.latency_ms), c.latency_target_ms);
            reward -= c.cost_weight * over(outcome.cost, c.cost_target_usd);
            reward = reward.max(0.0);
        }
        let (alpha, beta) = beta_of(&first);
        let decay = self.config.decay;
        // Decay both, then add the outcome: α' = dα + r, β' = dβ + (1 - r).
        let next_alpha = decay * alpha + reward;
        let next_beta = decay * beta + (1.0 - reward);
        let _ = state::add(&key("a", &first), ((next_alpha - alpha) * SCALE).round() as i64);
        let _ = state::add(&key("b", &first), ((next_beta - beta) * SCALE).round() as i64);
    }
}

/// How far `value` went past `target`, as a fraction of it, from 0 to 1.
fn over(value: f64, target: f64) -> f64 {
    if target <= 0.0 {
        return 0.0;
    }
    ((value - target) / target).clamp(0.0, 1.0)
}

fn key(which: &str, backend: &str) -> String {
    format!("{which}:{backend}")
}

/// A backend's Beta parameters: 1 + what its outcomes added (a uniform
/// prior before any).
fn beta_of(backend: &str) -> (f64, f64) {
    let read = |which: &str| {
        state::get(&key(which, backend)).and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map_or(0, i64::from_le_bytes)
    };
    (1.0 + read("a") as f64 / SCALE, 1.0 + read("b") as f64 / SCALE)
}

/// A Beta(α, β) sample from two Gamma samples.
fn sample_beta(rng: &mut SeedRng, alpha: f64, beta: f64) -> f64 {
    let x = sample_gamma(rng, alpha.max(1e-3));
    let y = sample_gamma(rng, beta.max(1e-3));
    if x + y == 0.0 {
        0.5
    } else {
        x / (x + y)
    }
}

/// A Gamma(shape, 1) sample (Marsaglia and Tsang; shape < 1 boosted).
fn sample_gamma(rng: &mut SeedRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        return sample_gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut SeedRng) -> f64 {
    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

switchyard_policy::export_policy!(Bandit);
