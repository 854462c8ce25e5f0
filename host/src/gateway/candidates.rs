//! Candidate policies beside a serving one: a **shadow** (`NAME.shadow`)
//! decides every request off its path and is compared with what served; a
//! **canary** (`NAME.canary`) serves a share of requests, is judged against
//! NAME over windows, and is rolled back (or promoted) on the numbers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::plan::Plan;
use crate::config::CanaryConfig;
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use crate::openai::inbound::InboundRequest;
use crate::policy::{Candidate, Decision, LoadedPolicy, PolicyRegistry};

/// The candidates' books.
#[derive(Default)]
pub struct Candidates {
    shadows: Mutex<HashMap<String, ShadowTally>>,
    canaries: Mutex<HashMap<String, CanaryBook>>,
}

/// A shadow's decisions so far.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ShadowTally {
    /// The shadow's version.
    pub version: String,
    /// Same first target as served (or both rejected).
    pub agreed: u64,
    /// Another first target, or a rejection where one served (or back).
    pub differed: u64,
    /// The shadow could not decide.
    pub failed: u64,
    /// Not decided: too many waiting.
    pub dropped: u64,
}

/// Which side of a canary a request was on.
#[derive(Debug, Clone)]
pub struct CanaryArm {
    /// The canary's name (`NAME.canary`).
    pub canary: String,
    /// The canary's version.
    pub version: String,
    /// The canary decided (else the stable version did).
    pub candidate: bool,
}

/// One side's numbers over the current window.
#[derive(Debug, Default, Clone, Copy)]
pub struct Window {
    /// Requests.
    pub requests: u64,
    /// Requests that failed: the policy could not decide, or a 5xx.
    pub errors: u64,
    /// Total latency, ms.
    pub latency_ms: f64,
    /// Total estimated cost, USD.
    pub cost: f64,
}

/// As the admin API shows it: the totals named as totals, and the means
/// the canary is judged on.
impl serde::Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut window = serializer.serialize_struct("Window", 6)?;
        window.serialize_field("requests", &self.requests)?;
        window.serialize_field("errors", &self.errors)?;
        window.serialize_field("mean_latency_ms", &self.mean_latency())?;
        window.serialize_field("mean_cost_usd", &self.mean_cost())?;
        window.serialize_field("total_latency_ms", &self.latency_ms)?;
        window.serialize_field("total_cost_usd", &self.cost)?;
        window.end()
    }
}

impl Window {
    fn error_rate(&self) -> f64 {
        self.errors as f64 / self.requests.max(1) as f64
    }

    fn mean_latency(&self) -> f64 {
        self.latency_ms / self.requests.max(1) as f64
    }

    fn mean_cost(&self) -> f64 {
        self.cost / self.requests.max(1) as f64
    }
}

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryState {
    /// Serving its share.
    Serving,
    /// Worse than stable: its file was renamed `*.rolled-back`, and it
    /// serves nothing (a restart does not bring it back).
    RolledBack,
    /// Its file replaced the stable version's.
    Promoted,
}

/// A canary's book: its state, the window being filled, and why it last
/// changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CanaryBook {
    /// The canary's version.
    pub version: String,
    /// Where it stands.
    pub state: CanaryState,
    /// The stable side's window.
    pub stable: Window,
    /// The canary's window.
    pub candidate: Window,
    /// Windows judged clean.
    pub clean_windows: u64,
    /// Why it was rolled back, if it was.
    pub reason: Option<String>,
}

/// What judging a window decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Roll the canary back, for this reason.
    RollBack(String),
    /// A clean window.
    Clean,
}

impl Candidates {
    /// The canary serving beside `instance`, if one is and is not rolled back.
    pub(super) fn canary(&self, registry: &PolicyRegistry, instance: &str) -> Option<Arc<LoadedPolicy>> {
        let name = Candidate::Canary.name_for(instance);
        let canary = registry.get(&name)?;
        let mut books = self.lock_canaries();
        let book = books.entry(name).or_insert_with(|| CanaryBook::new(canary.version()));
        if book.version != canary.version() {
            // A new file: a new canary, judged afresh.
            *book = CanaryBook::new(canary.version());
        }
        (book.state == CanaryState::Serving).then_some(canary)
    }

    /// Records how a request on a canary's side ended, and judges the window
    /// when both sides are full.
    pub(super) fn record(&self, arm: &CanaryArm, failed: bool, latency: Duration, cost: f64, config: &CanaryConfig) -> Option<Verdict> {
        let mut books = self.lock_canaries();
        let book = books.get_mut(&arm.canary).filter(|b| b.version == arm.version && b.state == CanaryState::Serving)?;
        let side = if arm.candidate { &mut book.candidate } else { &mut book.stable };
        side.requests += 1;
        side.errors += u64::from(failed);
        side.latency_ms += latency.as_secs_f64() * 1000.0;
        side.cost += cost;
        if book.stable.requests < config.min_requests || book.candidate.requests < config.min_requests {
            return None;
        }
        let verdict = judge(&book.stable, &book.candidate, config);
        match &verdict {
            // The gateway settles the book once the file is moved.
            Verdict::RollBack(_) => {}
            Verdict::Clean => {
                book.clean_windows += 1;
                book.stable = Window::default();
                book.candidate = Window::default();
            }
        }
        Some(verdict)
    }

    /// Marks the canary `canary` (version `version`) rolled back or
    /// promoted, for `/admin/policies`.
    pub(super) fn settle(&self, canary: &str, version: &str, state: CanaryState, reason: &str) {
        let mut books = self.lock_canaries();
        let book = books.entry(canary.to_owned()).or_insert_with(|| CanaryBook::new(version));
        book.state = state;
        book.reason = Some(reason.to_owned());
    }

    /// The canary's book, by the canary's name.
    pub fn canary_book(&self, canary: &str) -> Option<CanaryBook> {
        self.lock_canaries().get(canary).cloned()
    }

    /// The shadow's tally, by the shadow's name.
    pub fn shadow_tally(&self, shadow: &str) -> Option<ShadowTally> {
        self.shadows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(shadow).cloned()
    }

    fn lock_canaries(&self) -> std::sync::MutexGuard<'_, HashMap<String, CanaryBook>> {
        self.canaries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tally(&self, shadow: &str, version: &str, result: &'static str) {
        let mut shadows = self.shadows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tally = shadows.entry(shadow.to_owned()).or_default();
        if tally.version != version {
            *tally = ShadowTally { version: version.to_owned(), ..ShadowTally::default() };
        }
        match result {
            "agreed" => tally.agreed += 1,
            "differed" => tally.differed += 1,
            "failed" => tally.failed += 1,
            _ => tally.dropped += 1,
        }
    }
}

impl CanaryBook {
    fn new(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            state: CanaryState::Serving,
            stable: Window::default(),
            candidate: Window::default(),
            clean_windows: 0,
            reason: None,
        }
    }
}

/// Mean latency differences under this are never a regression.
const LATENCY_FLOOR_MS: f64 = 5.0;

/// Whether the canary's window is worse than the stable one's by more than
/// the configured margins.
pub fn judge(stable: &Window, candidate: &Window, config: &CanaryConfig) -> Verdict {
    let (s, c) = (stable.error_rate(), candidate.error_rate());
    if c > s + config.max_error_rate_increase {
        return Verdict::RollBack(format!("error rate {:.1}% against {:.1}%", c * 100.0, s * 100.0));
    }
    let (s, c) = (stable.mean_latency(), candidate.mean_latency());
    // Below a few milliseconds a difference is jitter, not a regression.
    if c > s * (1.0 + config.max_latency_increase) && c - s > LATENCY_FLOOR_MS {
        return Verdict::RollBack(format!("mean latency {c:.1} ms against {s:.1} ms"));
    }
    let (s, c) = (stable.mean_cost(), candidate.mean_cost());
    if c > s * (1.0 + config.max_cost_increase) && c > 0.0 {
        return Verdict::RollBack(format!("mean cost ${c:.6} against ${s:.6} a request"));
    }
    Verdict::Clean
}

/// Whether `inbound` is on the canary's side: the same caller always is
/// (by `user`, else client key), an anonymous one by its seed.
pub(super) fn on_canary_side(inbound: &InboundRequest, canary_version: &str, share: f64) -> bool {
    let caller = &inbound.view.caller;
    let point = match caller.user.as_deref().or(caller.key_name.as_deref()) {
        Some(who) => {
            let hash = blake3::Hasher::new().update(canary_version.as_bytes()).update(who.as_bytes()).finalize();
            u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default())
        }
        None => inbound.view.seed,
    };
    ((point % 10_000) as f64) < share * 100.0
}

/// What a shadow needs to compare with the served decision.
pub(super) struct ShadowRun {
    pub shadow: Arc<LoadedPolicy>,
    pub metrics: Arc<Metrics>,
    pub log: Option<Arc<DecisionLog>>,
    pub candidates: Arc<Candidates>,
}

/// Has the shadow beside the plan's policy decide `inbound` off its path,
/// and compares with what the plan served.
pub(super) fn shadow(run: ShadowRun, plan: &Plan, inbound: &Arc<InboundRequest>) {
    let Some((_, stats)) = &plan.seen else { return };
    let served: Option<String> = plan.decided_first.clone().filter(|_| plan.refusal.is_none());
    let ShadowRun { shadow, metrics, log, candidates } = run;
    let name = shadow.name().to_owned();
    let version = shadow.version().to_owned();
    let request_id = inbound.view.id.clone();
    let policy = plan.policy.clone();
    let (m, c, n, v) = (metrics.clone(), candidates.clone(), name.clone(), version.clone());
    let queued = shadow.decide_in_background(inbound.view.clone(), stats.clone(), move |decided| {
        let (result, would) = match &decided {
            Ok(Decision::Route(route)) => {
                let first = route.targets.first().map(|t| t.backend.clone());
                (if first == served { "agreed" } else { "differed" }, json!(first))
            }
            Ok(Decision::Reject { status, .. }) => (if served.is_none() { "agreed" } else { "differed" }, json!({"reject": status})),
            Err(e) => ("failed", json!({"policy_error": e.kind().as_str()})),
        };
        m.shadow_decision(&n, result);
        c.tally(&n, &v, result);
        if let (Some(log), "differed" | "failed") = (&log, result) {
            let record = json!({
                "ts_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "request_id": request_id, "policy": policy,
                "shadow": {"policy": format!("{n}@{v}"), "result": result, "served": served, "would": would},
            });
            log.write_sampled(record, true);
        }
    });
    if !queued {
        metrics.shadow_decision(&name, "dropped");
        candidates.tally(&name, &version, "dropped");
    }
}

/// A canary-side request being watched until its answer ends.
pub(super) struct CanaryWatch {
    gateway: Arc<super::Gateway>,
    arm: CanaryArm,
    started: std::time::Instant,
    /// Prices of the backend that answered, for the cost.
    prices: Option<(f64, f64)>,
    /// The policy could not decide, or rejected the request.
    refused: bool,
}

impl CanaryWatch {
    /// Watches the request `plan` is for, when it is on a canary's side.
    pub(super) fn start(
        gateway: &Arc<super::Gateway>,
        plan: &Plan,
        prices: Option<(f64, f64)>,
        started: std::time::Instant,
    ) -> Option<Self> {
        let arm = plan.canary.clone()?;
        let refused = plan.policy_error.is_some() || plan.refusal.is_some();
        Some(Self { gateway: gateway.clone(), arm, started, prices, refused })
    }

    /// Records how the request ended (`status`: for a stream, how the
    /// stream ended) and acts on the window's verdict. Never on an async
    /// worker's time: moving files happens on a blocking thread.
    pub(super) fn finish(self, status: u16, usage: Option<(u64, u64)>) {
        let cost = match (usage, self.prices) {
            (Some((input, output)), Some((i, o))) => (input as f64 * i + output as f64 * o) / 1e6,
            _ => 0.0,
        };
        // Upstream rate limits and 5xx count as errors, like the policy's own refusals.
        let failed = self.refused || status >= 500 || status == 429;
        let state = self.gateway.state();
        let config = &state.config.policies.canary;
        let verdict = self.gateway.candidates().record(&self.arm, failed, self.started.elapsed(), cost, config);
        let auto_promote = config.auto_promote;
        let (gateway, arm) = (self.gateway, self.arm);
        match verdict {
            Some(Verdict::RollBack(reason)) => {
                spawn_blocking(move || {
                    if let Err(e) = gateway.roll_back(&arm.canary, &reason) {
                        tracing::error!(canary = %arm.canary, "canary not rolled back: {e}");
                    }
                });
            }
            // Only a policy's own canary: one route's window does not speak for all.
            Some(Verdict::Clean) if auto_promote && !arm.canary.contains(crate::policy::INSTANCE_SEPARATOR) => {
                let base = Candidate::base_of(&arm.canary).unwrap_or_default();
                spawn_blocking(move || {
                    if let Err(e) = gateway.promote(&base) {
                        tracing::error!(policy = %base, "canary not promoted: {e}");
                    }
                });
            }
            _ => {}
        }
    }
}

/// Runs `f` on tokio's blocking threads when in a runtime, else here.
fn spawn_blocking(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(f);
        }
        Err(_) => f(),
    }
}

/// The JSON of the candidates beside `name`, for `/admin/policies`.
pub fn admin_json(candidates: &Candidates, registry: &PolicyRegistry, name: &str) -> Value {
    let shadow_name = Candidate::Shadow.name_for(name);
    // A tally outlives its shadow (its last figures stay to be read): `running` says which.
    let shadow = candidates.shadow_tally(&shadow_name).map(|tally| {
        let mut shown = json!(tally);
        shown["running"] = json!(registry.get(&shadow_name).is_some());
        shown
    });
    let canary = candidates.canary_book(&Candidate::Canary.name_for(name));
    json!({"shadow": shadow, "canary": canary})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, errors: u64, latency_ms: f64, cost: f64) -> Window {
        Window { requests, errors, latency_ms: latency_ms * requests as f64, cost: cost * requests as f64 }
    }

    #[test]
    fn a_window_is_judged_on_errors_latency_and_cost() {
        let config = CanaryConfig::default();
        let stable = window(100, 2, 100.0, 0.001);
        let cases = [
            (window(100, 2, 100.0, 0.001), Verdict::Clean),
            (window(100, 7, 100.0, 0.001), Verdict::Clean),
            (window(100, 8, 100.0, 0.001), Verdict::RollBack("error rate 8.0% against 2.0%".into())),
            (window(100, 0, 151.0, 0.001), Verdict::RollBack("mean latency 151.0 ms against 100.0 ms".into())),
            (window(100, 0, 90.0, 0.0013), Verdict::RollBack("mean cost $0.001300 against $0.001000 a request".into())),
            (window(100, 0, 10.0, 0.0001), Verdict::Clean),
        ];
        for (candidate, verdict) in cases {
            assert_eq!(judge(&stable, &candidate, &config), verdict, "{candidate:?}");
        }
    }
}
