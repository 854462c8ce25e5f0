//! `quality-router`: sends each prompt to a strong or a cheap model by a
//! learned prediction of how much the strong model would help on it.
//!
//! The model is compiled in (`model/quality-router.bin`, trained offline by
//! `train/train.py` on RouteLLM's MMLU outcomes): a linear score over hashed
//! word unigrams and bigrams of the newest user message. A score at or above
//! the threshold sends the prompt to the strong backend first, the cheap one
//! as fallback; below it, the other way round.
//!
//! Config: `strong` and `cheap` name a backend or a tag (required);
//! `strong_share` (0 to 1, default 0.5) picks the threshold at which that
//! share of training prompts went to the strong model, or `threshold` gives
//! the score itself. Labels: `score`, `reason` (`predicted-benefit`,
//! `below-threshold`, `no-text`) and `model` (the model's version).

mod model;

use model::Model;
use serde::Deserialize;
use switchyard_policy::prelude::*;

/// The embedded model file.
const MODEL_FILE: &[u8] = include_bytes!("../model/quality-router.bin");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    strong: String,
    cheap: String,
    #[serde(default)]
    strong_share: Option<f64>,
    #[serde(default)]
    threshold: Option<f32>,
}

struct QualityRouter {
    model: Model,
    strong: String,
    cheap: String,
    threshold: f32,
}

/// Backends named `which` or tagged so, healthy ones first.
fn pick<'a>(backends: &'a [Backend], which: &str) -> Vec<&'a Backend> {
    let mut found: Vec<&Backend> = backends.iter().filter(|b| b.name == which || b.has_tag(which)).collect();
    found.sort_by_key(|b| !b.is_healthy());
    found
}

impl Policy for QualityRouter {
    // It reads no live stats but the circuits.
    const STATS: StatsNeeded = StatsNeeded::Circuits;

    fn init(config: &str, backends: &[Backend]) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        for (key, which) in [("strong", &config.strong), ("cheap", &config.cheap)] {
            if pick(backends, which).is_empty() {
                return Err(format!("invalid config: `{key}` = `{which}` is neither a configured backend nor a tag of one"));
            }
        }
        let model = Model::parse(MODEL_FILE)?;
        let threshold = match (config.strong_share, config.threshold) {
            (Some(_), Some(_)) => return Err("invalid config: give `strong_share` or `threshold`, not both".into()),
            (_, Some(t)) if t.is_finite() => t,
            (_, Some(_)) => return Err("invalid config: `threshold` must be a number".into()),
            (Some(share), None) if (0.0..=1.0).contains(&share) => model.threshold_for_share((share * 100.0).round() as u32),
            (Some(share), None) => return Err(format!("invalid config: `strong_share` must be between 0 and 1, not {share}")),
            (None, None) => model.threshold_for_share(50),
        };
        Ok(Self { model, strong: config.strong, cheap: config.cheap, threshold })
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        let text = request.last_user_text();
        let score = self.model.score(text);
        let (first, then, reason) = if text.trim().is_empty() {
            (&self.cheap, &self.strong, "no-text")
        } else if score >= self.threshold {
            (&self.strong, &self.cheap, "predicted-benefit")
        } else {
            (&self.cheap, &self.strong, "below-threshold")
        };
        let first = pick(backends, first);
        let then = pick(backends, then);
        let order = first.iter().chain(then.iter().filter(|b| !first.iter().any(|f| f.name == b.name))).copied();
        route(order).label("score", &format!("{score:.4}")).label("reason", reason).label("model", self.model.version).into()
    }
}

switchyard_policy::export_policy!(QualityRouter);
