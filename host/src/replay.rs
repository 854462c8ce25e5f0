//! `switchyard replay`: a decision log run through a candidate policy, to
//! see what it would have decided on real traffic before it serves any.
//! Records are read one at a time (a log of any size), each request decided
//! with the stats the serving policy saw, and compared with the logged
//! decision (or a second candidate's).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::contract::{idle_stats, json, Backend, BackendStats, Request};
use crate::policy::{Decision, LoadedPolicy};

/// What a replay found.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Lines read.
    pub records: u64,
    /// Records decided by a policy and replayed.
    pub replayed: u64,
    /// Records not decided by a policy (`direct`, `targets`, `split`
    /// routes, a policy that failed, shadow records), or by another policy
    /// than `--name`'s, skipped.
    pub skipped: u64,
    /// Lines that are not decision-log records.
    pub unreadable: u64,
    /// Replayed records whose prompts were not logged: decided on what was.
    pub without_prompts: u64,
    /// Replayed records whose logged backends are not the configuration's:
    /// the candidate chose among backends the logged decision did not have
    /// (or lacked some it had).
    pub other_backends: u64,
    /// Same first target (or both rejected).
    pub agreed: u64,
    /// Changed decisions: `before -> after` first target (`reject` for a
    /// rejection), with counts.
    pub changed: BTreeMap<String, u64>,
    /// Rejections by the candidate.
    pub rejected: u64,
    /// The candidate's failures, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Records with token usage, on which costs are compared.
    pub costed: u64,
    /// Cost of the logged (or second candidate's) first targets for the
    /// logged tokens, USD.
    pub cost_before: f64,
    /// Cost of the candidate's first targets for the same tokens, USD.
    pub cost_after: f64,
    /// The candidate's decision time, microseconds (over a uniform sample of
    /// at most a million decisions).
    pub decision_us_p50: f64,
    /// The candidate's decision time, microseconds.
    pub decision_us_p99: f64,
}

impl ReplayReport {
    /// Agreed records per replayed one, 0 to 1.
    pub fn agreement(&self) -> f64 {
        if self.replayed == 0 {
            0.0
        } else {
            self.agreed as f64 / self.replayed as f64
        }
    }
}

/// The policies a log is replayed through.
pub struct Candidates<'a> {
    /// The candidate.
    pub policy: &'a LoadedPolicy,
    /// Compared with this one's decisions instead of the logged ones.
    pub against: Option<&'a LoadedPolicy>,
    /// The backends both were loaded with (the router's configuration).
    pub backends: &'a [Backend],
    /// Only records decided by this policy (`policy` = `NAME@version`).
    pub name: Option<&'a str>,
}

/// Replays every record of `log`; `progress` is told the records read.
pub fn replay(log: impl BufRead, candidates: &Candidates<'_>, mut progress: impl FnMut(u64)) -> ReplayReport {
    let mut report = ReplayReport::default();
    let mut times = Reservoir::default();
    for line in log.split(b'\n') {
        let Ok(line) = line else {
            // The file itself cannot be read on: what was read is reported.
            report.unreadable += 1;
            break;
        };
        if line.trim_ascii().is_empty() {
            continue;
        }
        report.records += 1;
        if report.records % 1000 == 0 {
            progress(report.records);
        }
        let Ok(record) = serde_json::from_slice::<Value>(&line) else {
            report.unreadable += 1;
            continue;
        };
        if record.get("shadow").is_some() {
            report.skipped += 1;
            continue;
        }
        let Some(Ok(request)) = record.get("request").map(|r| json::parse_request(&r.to_string())) else {
            report.unreadable += 1;
            continue;
        };
        // Only a policy's own decisions: a failed policy's targets were the route's.
        let decided = record["backends"].is_array() && record["decision"].get("policy_error").is_none();
        let named = candidates.name.is_none_or(|name| record["policy"].as_str().and_then(|p| p.split('@').next()) == Some(name));
        if !decided || !named {
            report.skipped += 1;
            continue;
        }
        report.replayed += 1;
        if prompts_left_out(&request) {
            report.without_prompts += 1;
        }
        if !same_backends(&record["backends"], candidates.backends) {
            report.other_backends += 1;
        }
        let stats = stats_for(&record["backends"], candidates.backends);
        let before = match candidates.against {
            Some(against) => match against.decide(&request, &stats) {
                Ok(decision) => first_target(&Ok(decision)),
                Err(e) => {
                    *report.errors.entry(format!("against: {}", e.kind().as_str())).or_default() += 1;
                    continue;
                }
            },
            None => logged_first_target(&record["decision"]),
        };
        let started = Instant::now();
        let decided = candidates.policy.decide(&request, &stats);
        times.add(started.elapsed());
        let after = match decided {
            Ok(decision) => first_target(&Ok(decision)),
            Err(e) => {
                *report.errors.entry(e.kind().as_str().to_owned()).or_default() += 1;
                continue;
            }
        };
        if after.is_none() {
            report.rejected += 1;
        }
        if before == after {
            report.agreed += 1;
        } else {
            let name = |t: &Option<String>| t.clone().unwrap_or_else(|| "reject".into());
            *report.changed.entry(format!("{} -> {}", name(&before), name(&after))).or_default() += 1;
        }
        if let (Some(tokens), Some(before), Some(after)) = (record.get("tokens").filter(|t| t.is_object()), &before, &after) {
            let (input, output) = (tokens["input"].as_u64().unwrap_or(0), tokens["output"].as_u64().unwrap_or(0));
            // First target against first target, for the same tokens: the
            // policies' choices compared, not the failovers that followed.
            if let (Some(b), Some(a)) = (price(candidates.backends, before), price(candidates.backends, after)) {
                report.costed += 1;
                report.cost_before += cost(b, input, output);
                report.cost_after += cost(a, input, output);
            }
        }
    }
    progress(report.records);
    report.decision_us_p50 = times.quantile(0.5);
    report.decision_us_p99 = times.quantile(0.99);
    report
}

/// Decision times, microseconds: every one up to [`Reservoir::CAP`], then a
/// uniform sample of that many (so a log of any size replays in bounded
/// memory).
#[derive(Default)]
struct Reservoir {
    kept: Vec<f32>,
    seen: u64,
    rng: u64,
}

impl Reservoir {
    const CAP: usize = 1 << 20;

    fn add(&mut self, took: Duration) {
        let micros = took.as_secs_f32() * 1e6;
        self.seen += 1;
        if self.kept.len() < Self::CAP {
            self.kept.push(micros);
            return;
        }
        // SplitMix64: a fixed sequence, so the same log gives the same report.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let at = (z ^ (z >> 31)) % self.seen;
        if let Some(slot) = self.kept.get_mut(at as usize) {
            *slot = micros;
        }
    }

    fn quantile(&mut self, q: f64) -> f64 {
        self.kept.sort_unstable_by(f32::total_cmp);
        let at = ((self.kept.len() as f64 - 1.0) * q).round() as usize;
        self.kept.get(at).map_or(0.0, |&v| f64::from(v))
    }
}

/// Whether messages have no text although they had some: the log kept only
/// their lengths.
fn prompts_left_out(request: &Request) -> bool {
    request.messages.iter().any(|m| m.text.is_empty() && m.text_bytes > 0)
}

/// Whether the logged backends are, by name, the configuration's.
fn same_backends(logged: &Value, backends: &[Backend]) -> bool {
    let logged: std::collections::BTreeSet<&str> = logged.as_array().into_iter().flatten().filter_map(|b| b["name"].as_str()).collect();
    logged == backends.iter().map(|b| b.name.as_str()).collect()
}

/// The logged stats in `backends`' order (idle for a backend the record
/// does not name).
fn stats_for(logged: &Value, backends: &[Backend]) -> Vec<BackendStats> {
    let text = logged.to_string();
    let by_name: BTreeMap<String, BackendStats> =
        json::parse_backends(&text).map(|(b, s)| b.into_iter().map(|b| b.name).zip(s).collect()).unwrap_or_default();
    backends.iter().map(|b| by_name.get(&b.name).cloned().unwrap_or_else(idle_stats)).collect()
}

fn first_target(decision: &Result<Decision, crate::policy::PolicyError>) -> Option<String> {
    match decision {
        Ok(Decision::Route(plan)) => plan.targets.first().map(|t| t.backend.clone()),
        _ => None,
    }
}

fn logged_first_target(decision: &Value) -> Option<String> {
    decision["targets"].get(0).and_then(|t| t["backend"].as_str()).map(str::to_owned)
}

fn price<'a>(backends: &'a [Backend], name: &str) -> Option<&'a Backend> {
    backends.iter().find(|b| b.name == name)
}

fn cost(b: &Backend, input: u64, output: u64) -> f64 {
    (input as f64 * b.input_price + output as f64 * b.output_price) / 1e6
}
