//! `private-data`: prompts that carry sensitive data go only to backends
//! tagged `private` (self-hosted models); other prompts go to the cheapest
//! capable backend. When a sensitive prompt meets no healthy private backend,
//! the request is refused with 403 and a message that says why.
//!
//! Detected: e-mail addresses, phone numbers, payment card numbers (Luhn
//! checked), IBANs (mod-97 checked), API keys and private keys, and the
//! configured keywords (case-insensitive) and regular expressions. Text the
//! router cut to the policy's text budget could hide anything: by default it
//! counts as sensitive.
//!
//! Config (all optional): `{"private_tag": "private", "keywords": ["project
//! nightingale"], "patterns": ["(?i)\\binternal only\\b"], "detect": ["email",
//! "phone", "card", "iban", "secret"], "cut_text_is_sensitive": true}`.

use regex::Regex;
use serde::Deserialize;
use switchyard_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    private_tag: String,
    keywords: Vec<String>,
    patterns: Vec<String>,
    detect: Vec<String>,
    cut_text_is_sensitive: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            private_tag: "private".into(),
            keywords: vec![],
            patterns: vec![],
            detect: ["email", "phone", "card", "iban", "secret"].map(String::from).to_vec(),
            cut_text_is_sensitive: true,
        }
    }
}

/// A kind of sensitive data and how to confirm a match.
struct Detector {
    kind: &'static str,
    regex: Regex,
    confirm: fn(&str) -> bool,
}

struct PrivateData {
    tag: String,
    detectors: Vec<Detector>,
    keywords: Vec<String>,
    patterns: Vec<Regex>,
    cut_text_is_sensitive: bool,
}

fn any(_: &str) -> bool {
    true
}

/// Luhn checksum over the digits of `s`, 13 to 19 of them.
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 check: move the first four characters to the end, letters to
/// numbers, mod 97 must be 1.
fn iban(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].chars().chain(compact[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        for d in if v >= 10 { vec![v / 10, v % 10] } else { vec![v] } {
            rem = (rem * 10 + d) % 97;
        }
    }
    rem == 1
}

fn detector(name: &str) -> Result<Detector, String> {
    let (kind, pattern, confirm): (&'static str, &str, fn(&str) -> bool) = match name {
        "email" => ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", any),
        "phone" => (
            "phone",
            r"(?:\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4})|(?:\(\d{3}\)\s?\d{3}[\s.-]\d{4})|(?:\b\d{3}[.-]\d{3}[.-]\d{4}\b)",
            any,
        ),
        "card" => ("card", r"\b(?:\d[ -]?){12,18}\d\b", luhn),
        "iban" => ("iban", r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]){11,30}\b", iban),
        "secret" => (
            "secret",
            r"(?:sk-[A-Za-z0-9_-]{20,})|(?:AKIA[0-9A-Z]{16})|(?:gh[pousr]_[A-Za-z0-9]{36})|(?:xox[abprs]-[A-Za-z0-9-]{10,})|(?:AIza[0-9A-Za-z_-]{35})|(?:-----BEGIN [A-Z ]*PRIVATE KEY-----)",
            any,
        ),
        other => return Err(format!("invalid config: `detect` has unknown kind `{other}` (email, phone, card, iban, secret)")),
    };
    Ok(Detector { kind, regex: Regex::new(pattern).map_err(|e| e.to_string())?, confirm })
}

impl Policy for PrivateData {
    // It reads no live stats but the circuits.
    const STATS: StatsNeeded = StatsNeeded::Circuits;

    fn init(config: &str, _backends: &[Backend]) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("invalid config: {e}"))?;
        let detectors = config.detect.iter().map(|k| detector(k)).collect::<Result<_, _>>()?;
        let patterns = config
            .patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| format!("invalid config: pattern `{p}`: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            tag: config.private_tag,
            detectors,
            keywords: config.keywords.iter().map(|k| k.to_lowercase()).collect(),
            patterns,
            cut_text_is_sensitive: config.cut_text_is_sensitive,
        })
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        let found = self.sensitive_kinds(request);
        let capable = backends.iter().filter(|b| b.can_serve(request));
        if found.is_empty() {
            let candidates: Vec<&Backend> = capable.collect();
            if candidates.is_empty() {
                return reject(400, "no backend can serve this request");
            }
            return route(rank_by_cost(candidates, request)).limit(3).label("sensitive", "no").into();
        }
        let private: Vec<&Backend> = capable.filter(|b| b.has_tag(&self.tag) && b.is_healthy()).collect();
        if private.is_empty() {
            return reject(
                403,
                format!("this request contains sensitive data ({}) and no healthy private backend can take it", found.join(", ")),
            );
        }
        route(rank_by_cost(private, request)).label("sensitive", &found.join("+")).into()
    }
}

impl PrivateData {
    fn sensitive_kinds(&self, request: &Request) -> Vec<&'static str> {
        let mut found: Vec<&'static str> = Vec::new();
        let mut note = |kind: &'static str| {
            if !found.contains(&kind) {
                found.push(kind);
            }
        };
        for m in &request.messages {
            for d in &self.detectors {
                if d.regex.find_iter(&m.text).any(|hit| (d.confirm)(hit.as_str())) {
                    note(d.kind);
                }
            }
            if !self.keywords.is_empty() {
                let lower = m.text.to_lowercase();
                if self.keywords.iter().any(|k| lower.contains(k.as_str())) {
                    note("keyword");
                }
            }
            if self.patterns.iter().any(|p| p.is_match(&m.text)) {
                note("pattern");
            }
        }
        if self.cut_text_is_sensitive && request.is_text_cut() {
            note("unscanned-text");
        }
        found
    }
}

switchyard_policy::export_policy!(PrivateData);
