//! `content-aware`: routes by what the prompt holds. Rules, first match wins:
//!
//! 1. The caller's tier (tag `tier`, from request metadata or an
//!    `x-switchyard-tier` header) limits the backends to those the tier may
//!    use (`tiers`); unknown or missing tiers may use all.
//! 2. Only backends that can serve the request count: images need vision,
//!    tools need tool support, the prompt must fit the context window.
//! 3. A long prompt (over `long_prompt_tokens`) goes to the largest context
//!    window first (`rule=long`).
//! 4. Code or maths goes to `specialist` (`rule=code`).
//! 5. Negative or urgent wording goes to `urgent` (`rule=urgent`).
//! 6. A short prompt without images or tools goes to `cheap` (`rule=short`).
//! 7. Otherwise the cheapest capable backend (`rule=default`).
//!
//! The rest of the allowed capable backends follow, cheapest first.
//!
//! Config (all optional): `{"specialist": "code-model", "urgent": "fast-model",
//! "cheap": "small-model", "long_prompt_tokens": 8000, "short_prompt_tokens":
//! 200, "tiers": {"free": ["small-model"], "pro": ["small-model", "large-model"]},
//! "urgent_words": [...]}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use switchyard_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    specialist: Option<String>,
    urgent: Option<String>,
    cheap: Option<String>,
    long_prompt_tokens: u32,
    short_prompt_tokens: u32,
    tiers: BTreeMap<String, Vec<String>>,
    urgent_words: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            specialist: None,
            urgent: None,
            cheap: None,
            long_prompt_tokens: 8000,
            short_prompt_tokens: 200,
            tiers: BTreeMap::new(),
            urgent_words: [
                "urgent",
                "asap",
                "immediately",
                "emergency",
                "angry",
                "furious",
                "terrible",
                "awful",
                "worst",
                "unacceptable",
                "broken",
                "refund",
                "cancel",
                "complaint",
                "frustrated",
                "disappointed",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

const CODE_MARKERS: &[&str] = &[
    "```",
    "fn ",
    "def ",
    "class ",
    "import ",
    "#include",
    "function(",
    "=> {",
    "select ",
    "console.log",
    "println!",
    "stack trace",
    "traceback",
    "\\frac",
    "\\sum",
    "\\int",
    "integral",
    "derivative",
    "equation",
    "prove that",
    "theorem",
    "matrix",
];

struct ContentAware {
    config: Config,
}

impl Policy for ContentAware {
    // It reads no live stats but the circuits.
    const STATS: StatsNeeded = StatsNeeded::Circuits;

    fn init(config: &str, backends: &[Backend]) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        let named = [("specialist", &config.specialist), ("urgent", &config.urgent), ("cheap", &config.cheap)];
        for (key, name) in named {
            if let Some(name) = name.as_deref().filter(|n| !backends.iter().any(|b| b.name == *n)) {
                return Err(format!("invalid config: `{key}` names `{name}`, which is not a configured backend"));
            }
        }
        for (tier, names) in &config.tiers {
            if let Some(name) = names.iter().find(|n| !backends.iter().any(|b| &b.name == *n)) {
                return Err(format!("invalid config: tier `{tier}` names `{name}`, which is not a configured backend"));
            }
        }
        Ok(Self { config })
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        let c = &self.config;
        let tier = request.tag("tier");
        let allowed = tier.and_then(|t| c.tiers.get(t));
        let candidates: Vec<&Backend> =
            backends.iter().filter(|b| allowed.is_none_or(|names| names.contains(&b.name))).filter(|b| b.can_serve(request)).collect();
        if candidates.is_empty() {
            let tier_note = tier.filter(|_| allowed.is_some()).map(|t| format!(" allowed for the `{t}` tier")).unwrap_or_default();
            return reject(400, format!("no backend{tier_note} can serve this request (images, tools or its length)"));
        }
        let ranked = rank_by_cost(candidates.clone(), request);
        let named =
            |name: &Option<String>| name.as_deref().and_then(|n| candidates.iter().copied().find(|b| b.name == n && b.is_healthy()));
        let text = request.last_user_text().to_lowercase();

        let (first, rule) = if request.input_tokens > c.long_prompt_tokens {
            (candidates.iter().copied().filter(|b| b.is_healthy()).max_by_key(|b| b.context_window), "long")
        } else if let Some(b) = named(&c.specialist).filter(|_| CODE_MARKERS.iter().any(|m| text.contains(m))) {
            (Some(b), "code")
        } else if let Some(b) = named(&c.urgent).filter(|_| c.urgent_words.iter().any(|w| has_word(&text, w))) {
            (Some(b), "urgent")
        } else if let Some(b) =
            named(&c.cheap).filter(|_| request.input_tokens < c.short_prompt_tokens && !request.has_images() && request.tools.is_empty())
        {
            (Some(b), "short")
        } else {
            (None, "default")
        };
        let order: Vec<&Backend> = match first {
            Some(first) => std::iter::once(first).chain(ranked.into_iter().filter(|b| b.name != first.name)).collect(),
            None => ranked,
        };
        let mut decision = route(order).limit(4).label("rule", rule);
        if let Some(t) = tier {
            decision = decision.label("tier", t);
        }
        decision.into()
    }
}

/// `word` appears in `text` as a whole word.
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
        let after = text[i + word.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric());
        before && after
    })
}

switchyard_policy::export_policy!(ContentAware);
