//! `ab-test`: splits traffic between arms by weight. With `sticky` (the
//! default), a caller (the request's `user`, else the API key's name) always
//! lands in the same arm: a stable FNV-1a bucket of their identity. Callers
//! without an identity are placed by the request's seed. Every decision is
//! labelled `arm=<name>`; the other arms' backends are the fallbacks.
//!
//! Config: `{"arms": [{"name": "control", "backend": "gpt-4o", "weight": 90},
//! {"name": "candidate", "backend": "claude", "weight": 10}], "sticky": true}`.

use serde::Deserialize;
use switchyard_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Arm {
    name: String,
    backend: String,
    weight: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    arms: Vec<Arm>,
    #[serde(default = "yes")]
    sticky: bool,
}

fn yes() -> bool {
    true
}

/// Buckets of the sticky split: fine enough for weights to 0.01 %.
const BUCKETS: u32 = 10_000;

struct AbTest {
    config: Config,
    total: f64,
}

impl Policy for AbTest {
    // It reads no live stats but the circuits.
    const STATS: StatsNeeded = StatsNeeded::Circuits;

    fn init(config: &str, backends: &[Backend]) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        if config.arms.is_empty() {
            return Err("invalid config: `arms` is empty".into());
        }
        for arm in &config.arms {
            if !(arm.weight.is_finite() && arm.weight >= 0.0) {
                return Err(format!("invalid config: arm `{}` has weight {}", arm.name, arm.weight));
            }
            if !backends.iter().any(|b| b.name == arm.backend) {
                return Err(format!("invalid config: arm `{}` names `{}`, which is not a configured backend", arm.name, arm.backend));
            }
        }
        let total = config.arms.iter().map(|a| a.weight).sum::<f64>();
        if total <= 0.0 {
            return Err("invalid config: the arms' weights add up to 0".into());
        }
        Ok(Self { config, total })
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        let identity = request.caller.user.as_deref().or(request.caller.key_name.as_deref());
        let (chosen, how) = match identity.filter(|_| self.config.sticky) {
            Some(id) => {
                let point = f64::from(hash_bucket(id, BUCKETS)) / f64::from(BUCKETS) * self.total;
                (self.arm_at(point), "sticky")
            }
            None => {
                let weights: Vec<f64> = self.config.arms.iter().map(|a| a.weight).collect();
                (weighted_choice(request.seed, &weights).unwrap_or(0), "random")
            }
        };
        let arm = &self.config.arms[chosen];
        let backend_of = |name: &str| backends.iter().find(|b| b.name == name);
        let Some(primary) = backend_of(&arm.backend) else { return reject(500, "an arm's backend disappeared from the configuration") };
        let fallbacks = self
            .config
            .arms
            .iter()
            .filter(|a| a.backend != arm.backend)
            .filter_map(|a| backend_of(&a.backend))
            .filter(|b| b.can_serve(request));
        route([primary]).then_all(fallbacks).label("arm", &arm.name).label("assignment", how).into()
    }
}

impl AbTest {
    /// The arm whose cumulative weight range holds `point`.
    fn arm_at(&self, point: f64) -> usize {
        let mut upto = 0.0;
        for (i, arm) in self.config.arms.iter().enumerate() {
            upto += arm.weight;
            if point < upto {
                return i;
            }
        }
        self.config.arms.iter().rposition(|a| a.weight > 0.0).unwrap_or(0)
    }
}

switchyard_policy::export_policy!(AbTest);
