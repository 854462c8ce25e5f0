//! `fallback-cheaper`: a primary backend from the config; when it fails (or
//! cannot take the request), the backends cheaper than it, the closest in
//! price first, so quality degrades as little as possible.
//!
//! Config: `{"primary": "<backend name>", "max_fallbacks": 3}`.

use serde::Deserialize;
use switchyard_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    primary: String,
    #[serde(default = "default_max_fallbacks")]
    max_fallbacks: usize,
}

fn default_max_fallbacks() -> usize {
    3
}

struct FallbackCheaper {
    config: Config,
}

impl Policy for FallbackCheaper {
    // It reads no live stats but the circuits.
    const STATS: StatsNeeded = StatsNeeded::Circuits;

    fn init(config: &str, backends: &[Backend]) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        if !backends.iter().any(|b| b.name == config.primary) {
            return Err(format!("invalid config: `primary` names `{}`, which is not a configured backend", config.primary));
        }
        Ok(Self { config })
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        let Some(primary) = backends.iter().find(|b| b.name == self.config.primary) else {
            return reject(500, "the primary backend disappeared from the configuration");
        };
        let primary_cost = primary.estimated_cost(request);
        let mut cheaper: Vec<&Backend> = backends
            .iter()
            .filter(|b| b.name != primary.name && b.can_serve(request) && b.estimated_cost(request) < primary_cost)
            .collect();
        // Closest in price first: the most capable of the cheaper ones.
        cheaper
            .sort_by(|a, b| (!a.is_healthy()).cmp(&!b.is_healthy()).then(b.estimated_cost(request).total_cmp(&a.estimated_cost(request))));
        cheaper.truncate(self.config.max_fallbacks);
        if primary.can_serve(request) {
            route([primary]).then_all(cheaper).label("reason", "primary").into()
        } else if !cheaper.is_empty() {
            route(cheaper).label("reason", "primary-cannot-serve").into()
        } else {
            reject(400, format!("backend `{}` cannot serve this request and no cheaper backend can", primary.name))
        }
    }
}

switchyard_policy::export_policy!(FallbackCheaper);
