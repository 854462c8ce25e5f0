//! `adaptive`: weights backends by their live latency, error rate and price,
//! with a configurable trade-off, and picks the primary at random in
//! proportion (from the request's seed, so decisions replay). Open circuits
//! go last; a small share of requests explores any capable backend, so a
//! backend that recovered is noticed. Traffic leaves a degrading backend as
//! soon as its stats show it, and comes back as they recover.
//!
//! Score (lower is better): `latency_weight * p50 / slowest p50
//! + error_weight * error rate + price_weight * cost / dearest cost`;
//! weight `exp(-sharpness * score)`.
//!
//! Config (all optional): `{"latency_weight": 1.0, "error_weight": 4.0,
//! "price_weight": 0.5, "sharpness": 4.0, "explore": 0.05, "max_targets": 3}`.

use serde::Deserialize;
use switchyard_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    latency_weight: f64,
    error_weight: f64,
    price_weight: f64,
    sharpness: f64,
    explore: f64,
    max_targets: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { latency_weight: 1.0, error_weight: 4.0, price_weight: 0.5, sharpness: 4.0, explore: 0.05, max_targets: 3 }
    }
}

struct Adaptive {
    config: Config,
}

impl Policy for Adaptive {
    fn init(config: &str, _backends: &[Backend]) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        let weights = [config.latency_weight, config.error_weight, config.price_weight, config.sharpness];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || !(0.0..=1.0).contains(&config.explore) || config.max_targets == 0 {
            return Err("invalid config: weights must be 0 or more, `explore` between 0 and 1, `max_targets` at least 1".into());
        }
        Ok(Self { config })
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        let capable: Vec<&Backend> = backends.iter().filter(|b| b.can_serve(request)).collect();
        let (live, open): (Vec<&Backend>, Vec<&Backend>) = capable.iter().partition(|b| b.is_healthy());
        if live.is_empty() {
            return match open.is_empty() {
                true => reject(400, "no backend can serve this request"),
                false => route(open).limit(self.config.max_targets).label("reason", "all-circuits-open").into(),
            };
        }
        let slowest = live.iter().map(|b| b.stats.latency_p50_ms).fold(0.0f32, f32::max).max(1.0);
        let dearest = live.iter().map(|b| b.estimated_cost(request)).fold(0.0f64, f64::max);
        let c = &self.config;
        let scores: Vec<f64> = live
            .iter()
            .map(|b| {
                // Unmeasured backends look as fast as the fastest: worth a try.
                let latency = f64::from(b.stats.latency_p50_ms / slowest);
                let price = if dearest > 0.0 { b.estimated_cost(request) / dearest } else { 0.0 };
                c.latency_weight * latency + c.error_weight * f64::from(b.stats.error_rate) + c.price_weight * price
            })
            .collect();
        let mut rng = SeedRng::new(request.seed);
        let explore = rng.next_f64() < c.explore;
        let weights: Vec<f64> = if explore { vec![1.0; live.len()] } else { scores.iter().map(|s| (-c.sharpness * s).exp()).collect() };
        let primary = weighted_choice(rng.next_u64(), &weights).unwrap_or(0);
        let mut rest: Vec<usize> = (0..live.len()).filter(|&i| i != primary).collect();
        rest.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let order = std::iter::once(live[primary]).chain(rest.into_iter().map(|i| live[i])).chain(open);
        route(order).limit(c.max_targets).label("reason", if explore { "explore" } else { "adaptive" }).into()
    }
}

switchyard_policy::export_policy!(Adaptive);
