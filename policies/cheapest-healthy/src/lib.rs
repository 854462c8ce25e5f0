//! `cheapest-healthy`: the cheapest backend that can serve the request, with
//! the next cheapest as fallbacks.
//!
//! A backend can serve a request when it has the capabilities the request
//! needs (vision for images, tools, JSON mode, streaming) and a context
//! window that holds the input and the requested output. Backends with an
//! open circuit go last, so they are tried only when everything else failed.
//! With no capable backend at all, the request is rejected with 400.
//!
//! Config (all optional):
//! - `max_targets` (default 3): how many backends to try at most.
//! - `require_tag`: only consider backends with this tag (e.g. `"eu"`).

use serde::Deserialize;
use switchyard_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_max_targets")]
    max_targets: usize,
    #[serde(default)]
    require_tag: Option<String>,
}

fn default_max_targets() -> usize {
    3
}

struct CheapestHealthy {
    config: Config,
}

impl Policy for CheapestHealthy {
    // Circuits, prices and capabilities are all it looks at.
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
            .filter(|b| b.can_serve(request))
            .filter(|b| self.config.require_tag.as_deref().is_none_or(|tag| b.has_tag(tag)))
            .collect();
        if candidates.is_empty() {
            return reject(400, no_backend_message(request, self.config.require_tag.as_deref()));
        }
        route(rank_by_cost(candidates, request)).limit(self.config.max_targets).label("reason", "cheapest").into()
    }
}

fn no_backend_message(request: &Request, tag: Option<&str>) -> String {
    let mut needs = Vec::new();
    if request.has_images() {
        needs.push("vision".to_owned());
    }
    if !request.tools.is_empty() {
        needs.push("tools".to_owned());
    }
    if request.json_mode {
        needs.push("JSON mode".to_owned());
    }
    if let Some(tag) = tag {
        needs.push(format!("tag `{tag}`"));
    }
    needs.push(format!("{} tokens of context", request.input_tokens + request.max_output_tokens.unwrap_or(0)));
    format!("no backend can serve this request: it needs {}", needs.join(", "))
}

switchyard_policy::export_policy!(CheapestHealthy);
