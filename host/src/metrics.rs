//! Prometheus metrics: what happened to requests, attempts, streams and
//! policy calls, recorded on the request path (atomic counters and
//! histograms; a backend's and a policy version's series are kept and found
//! by name, without building labels), plus gauges read from live state at
//! scrape time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::contract::CircuitState;
use crate::gateway::Gateway;

/// Labels of an answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The model the client asked for.
    pub model: String,
    /// The backend that answered (`none` when none did).
    pub backend: String,
    /// The policy's name (`direct` when the request named a backend).
    pub policy: String,
    /// HTTP status.
    pub status: u16,
    /// The decision's `arm` label (experiments), or empty.
    pub arm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    backend: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    backend: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyErrorLabels {
    policy: String,
    kind: &'static str,
    /// What the route did instead: `reject` or `fallback`.
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CandidateLabels {
    /// The candidate (`NAME.shadow`, `NAME.canary`).
    policy: String,
    /// Shadow: `agreed`, `differed`, `failed`, `dropped`; canary: the
    /// transition (`rolled_back`, `promoted`).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RescueLabels {
    /// The backend that was to continue the stream.
    backend: String,
    /// `prefill` or `regenerate`.
    mode: &'static str,
    /// `rescued`, `failed` (no stream), `diverged` (a regeneration that
    /// differs from what the client has) or `broke` (it broke too).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    /// `client` or `route`.
    scope: &'static str,
    /// `requests`, `tokens`, `concurrency` or `budget`.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SharedLabels {
    /// `admit`, `cache_get`, `flush` (deferred writes: settlements and
    /// cached answers), `deferred_dropped`.
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    /// `hit`, `miss` or `skip`.
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

fn micros() -> Histogram {
    Histogram::new(exponential_buckets(0.000_001, 2.0, 16))
}

/// A backend's series of the families above, each made when first used
/// and kept, so that a request finds them by the backend's name alone:
/// building the labels cost a `String` and a SipHash per series per request.
#[derive(Default)]
struct BackendSeries {
    duration: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    tokens_in: OnceLock<Counter>,
    tokens_out: OnceLock<Counter>,
    cost_micro_usd: OnceLock<Counter>,
    attempts_ok: OnceLock<Counter>,
}

type ByName<V> = RwLock<HashMap<String, V, foldhash::fast::RandomState>>;

/// Reads `lock`, poisoned or not (the maps hold only metric handles).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// The router's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<BackendLabels>,
    ttft: HistogramFamily<BackendLabels>,
    overhead: Histogram,
    attempts: Family<AttemptLabels, Counter>,
    fallbacks: Counter,
    tokens: Family<TokenLabels, Counter>,
    cost_micro_usd: Family<BackendLabels, Counter>,
    decision: HistogramFamily<PolicyLabels>,
    policy_errors: Family<PolicyErrorLabels, Counter>,
    stream_failures: Family<BackendLabels, Counter>,
    rescues: Family<RescueLabels, Counter>,
    unterminated: Family<BackendLabels, Counter>,
    shadow: Family<CandidateLabels, Counter>,
    canary: Family<CandidateLabels, Counter>,
    quota_refusals: Family<QuotaLabels, Counter>,
    shared_errors: Family<SharedLabels, Counter>,
    shared_calls: HistogramFamily<SharedLabels>,
    cache: Family<CacheLabels, Counter>,
    cache_stored_bytes: Counter,
    pub(crate) cache_evictions: Counter,
    /// Each backend's series, by backend name.
    backends: ByName<BackendSeries>,
    /// Each policy version's decision histogram, by policy name, then version.
    decisions: ByName<HashMap<String, Histogram, foldhash::fast::RandomState>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(seconds as fn() -> Histogram),
            ttft: Family::new_with_constructor(seconds as fn() -> Histogram),
            overhead: micros(),
            attempts: Family::default(),
            fallbacks: Counter::default(),
            tokens: Family::default(),
            cost_micro_usd: Family::default(),
            decision: Family::new_with_constructor(micros as fn() -> Histogram),
            policy_errors: Family::default(),
            stream_failures: Family::default(),
            rescues: Family::default(),
            unterminated: Family::default(),
            shadow: Family::default(),
            canary: Family::default(),
            quota_refusals: Family::default(),
            shared_errors: Family::default(),
            shared_calls: Family::new_with_constructor(micros as fn() -> Histogram),
            cache: Family::default(),
            cache_stored_bytes: Counter::default(),
            cache_evictions: Counter::default(),
            backends: RwLock::default(),
            decisions: RwLock::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by virtual model, backend, policy, status and experiment arm",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to complete answer (streams: to the first event)",
            m.duration.clone(),
        );
        registry.register("ttft_seconds", "Time to the first streamed event, by backend", m.ttft.clone());
        registry.register(
            "overhead_seconds",
            "The router's own time per request: total minus time waiting on upstreams",
            m.overhead.clone(),
        );
        registry.register("attempts", "Upstream attempts, by backend and outcome", m.attempts.clone());
        registry.register("fallbacks", "Requests answered by a target other than the first", m.fallbacks.clone());
        registry.register("tokens", "Tokens reported by upstreams, by backend and direction", m.tokens.clone());
        registry.register(
            "cost_micro_usd",
            "Estimated cost in millionths of a US dollar, from tokens and configured prices",
            m.cost_micro_usd.clone(),
        );
        registry.register("policy_decision_seconds", "Time of one policy decision, by policy version", m.decision.clone());
        registry.register(
            "policy_errors",
            "Policies that could not decide, by kind of failure and what the route did (reject, or its on_policy_error backends)",
            m.policy_errors.clone(),
        );
        registry.register("stream_failures", "Streams that broke after their first byte", m.stream_failures.clone());
        registry.register(
            "stream_rescues",
            "Tries to continue a broken stream, by the backend asked, mode (prefill, regenerate) and outcome",
            m.rescues.clone(),
        );
        registry.register(
            "streams_unterminated",
            "Streams whose answer was complete (finished, with the usage asked for) but that closed without [DONE]; finished for the client",
            m.unterminated.clone(),
        );
        registry.register(
            "shadow_decisions",
            "Decisions of shadow candidates, off the request path: agreed or differed with the served one, failed, or dropped under load",
            m.shadow.clone(),
        );
        registry.register("canary_transitions", "Canary candidates rolled back or promoted", m.canary.clone());
        registry.register(
            "quota_refusals",
            "Requests refused by a limit (429), by scope (client, route) and reason (requests, tokens, concurrency, budget)",
            m.quota_refusals.clone(),
        );
        registry.register(
            "shared_store_errors",
            "Shared-store (Redis) calls that got no answer: failed, timed out, or not tried in the second after a failure; by operation. on_shared_error says what their requests got",
            m.shared_errors.clone(),
        );
        registry.register(
            "shared_store_seconds",
            "Round trips to the shared store that were answered, by operation (admit, cache_get, flush)",
            m.shared_calls.clone(),
        );
        registry.register(
            "cache_requests",
            "Cache lookups: hit, miss, or skip (not eligible, or skipped by the client or the policy)",
            m.cache.clone(),
        );
        registry.register("cache_stored_bytes", "Bytes of answers written to the response cache", m.cache_stored_bytes.clone());
        registry.register("cache_evictions", "Answers the local cache let go before their time to make room", m.cache_evictions.clone());
        Self { registry, ..m }
    }

    /// A shadow candidate's decision.
    pub fn shadow_decision(&self, policy: &str, result: &'static str) {
        self.shadow.get_or_create(&CandidateLabels { policy: policy.to_owned(), result }).inc();
    }

    /// A canary candidate rolled back or promoted.
    pub fn canary_transition(&self, policy: &str, result: &'static str) {
        self.canary.get_or_create(&CandidateLabels { policy: policy.to_owned(), result }).inc();
    }

    /// One answered request.
    pub fn request(&self, labels: RequestLabels, total: Duration, overhead: Duration) {
        if labels.backend != "none" {
            self.with_backend(&labels.backend, |s, l| {
                s.duration.get_or_init(|| self.duration.get_or_create(&l()).clone()).observe(total.as_secs_f64())
            });
        }
        self.requests.get_or_create(&labels).inc();
        self.overhead.observe(overhead.as_secs_f64());
    }

    /// One upstream attempt.
    pub fn attempt(&self, backend: &str, outcome: &'static str) {
        let count = |backend: String| self.attempts.get_or_create(&AttemptLabels { backend, outcome }).clone();
        if outcome == "ok" {
            self.with_backend(backend, |s, l| {
                s.attempts_ok.get_or_init(|| count(l().backend)).inc();
            });
        } else {
            count(backend.to_owned()).inc();
        }
    }

    /// A request answered by a fallback.
    pub fn fallback(&self) {
        self.fallbacks.inc();
    }

    /// The first event of a stream.
    pub fn first_token(&self, backend: &str, ttft: Duration) {
        self.with_backend(backend, |s, l| s.ttft.get_or_init(|| self.ttft.get_or_create(&l()).clone()).observe(ttft.as_secs_f64()));
    }

    /// Tokens used, and their estimated cost at the backend's prices.
    pub fn tokens(&self, backend: &str, input: u64, output: u64, cost_usd: f64) {
        let micro_usd = (cost_usd * 1e6).round() as u64;
        let tokens = |backend: String, direction| self.tokens.get_or_create(&TokenLabels { backend, direction }).clone();
        self.with_backend(backend, |s, l| {
            s.tokens_in.get_or_init(|| tokens(l().backend, "input")).inc_by(input);
            s.tokens_out.get_or_init(|| tokens(l().backend, "output")).inc_by(output);
            s.cost_micro_usd.get_or_init(|| self.cost_micro_usd.get_or_create(&l()).clone()).inc_by(micro_usd);
        });
    }

    /// One policy decision.
    pub fn decision(&self, policy: &str, version: &str, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(h) = read(&self.decisions).get(policy).and_then(|v| v.get(version)) {
            return h.observe(seconds);
        }
        let h = self.decision.get_or_create(&PolicyLabels { policy: policy.to_owned(), version: version.to_owned() }).clone();
        h.observe(seconds);
        let mut decisions = self.decisions.write().unwrap_or_else(|p| p.into_inner());
        decisions.entry(policy.to_owned()).or_default().insert(version.to_owned(), h);
    }

    /// Runs `f` on `backend`'s series (made empty the first time it is
    /// named), with a maker of its labels for series not made yet.
    fn with_backend(&self, backend: &str, f: impl FnOnce(&BackendSeries, &dyn Fn() -> BackendLabels)) {
        let labels = || BackendLabels { backend: backend.to_owned() };
        if let Some(series) = read(&self.backends).get(backend) {
            return f(series, &labels);
        }
        let mut backends = self.backends.write().unwrap_or_else(|p| p.into_inner());
        f(backends.entry(backend.to_owned()).or_default(), &labels);
    }

    /// A policy that could not decide, and what its route did instead.
    pub fn policy_error(&self, policy: &str, kind: &'static str, action: &'static str) {
        self.policy_errors.get_or_create(&PolicyErrorLabels { policy: policy.to_owned(), kind, action }).inc();
    }

    /// A stream that broke after it started.
    pub fn stream_failure(&self, backend: &str) {
        self.stream_failures.get_or_create(&BackendLabels { backend: backend.to_owned() }).inc();
    }

    /// A try to continue a broken stream on `backend`.
    pub fn rescue(&self, backend: &str, mode: &'static str, outcome: &'static str) {
        self.rescues.get_or_create(&RescueLabels { backend: backend.to_owned(), mode, outcome }).inc();
    }

    /// A complete stream that closed without `[DONE]`.
    pub fn unterminated_stream(&self, backend: &str) {
        self.unterminated.get_or_create(&BackendLabels { backend: backend.to_owned() }).inc();
    }

    /// A request refused by a limit or a budget.
    pub fn quota_refusal(&self, scope: &'static str, reason: &'static str) {
        self.quota_refusals.get_or_create(&QuotaLabels { scope, reason }).inc();
    }

    /// A shared-store call that failed.
    pub fn shared_error(&self, op: &'static str) {
        self.shared_errors.get_or_create(&SharedLabels { op }).inc();
    }

    /// A shared-store round trip that was answered, and how long it took.
    pub fn shared_call(&self, op: &'static str, took: Duration) {
        self.shared_calls.get_or_create(&SharedLabels { op }).observe(took.as_secs_f64());
    }

    /// A cache lookup's result.
    pub fn cache(&self, result: &'static str) {
        self.cache.get_or_create(&CacheLabels { result }).inc();
    }

    /// An answer stored in the cache.
    pub fn cache_stored(&self, bytes: usize) {
        self.cache_stored_bytes.inc_by(bytes as u64);
    }

    /// An answer evicted from the local cache for room.
    pub fn cache_eviction(&self) {
        self.cache_evictions.inc();
    }

    /// The text exposition, with the gauges of `gateway`'s live state.
    pub fn render(&self, gateway: &Gateway) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let state = gateway.state();
        let _ = writeln!(out, "# HELP switchyard_circuit_state Circuit of each backend: 0 closed, 1 half-open, 2 open.\n# TYPE switchyard_circuit_state gauge");
        for u in &state.upstreams {
            let v = match u.stats.circuit_state() {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            };
            let _ = writeln!(out, "switchyard_circuit_state{{backend=\"{}\"}} {v}", escape(u.name()));
        }
        let _ = writeln!(out, "# HELP switchyard_in_flight Requests in flight to each backend.\n# TYPE switchyard_in_flight gauge");
        for u in &state.upstreams {
            let _ = writeln!(out, "switchyard_in_flight{{backend=\"{}\"}} {}", escape(u.name()), u.stats.view().in_flight);
        }
        if let Some(log) = gateway.decision_log() {
            let _ = writeln!(
                out,
                "# HELP switchyard_decision_log_dropped Decision-log records dropped because the writer could not keep up.\n# TYPE switchyard_decision_log_dropped counter\nswitchyard_decision_log_dropped_total {}",
                log.dropped()
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_cache_bytes Bytes of answers held by the local response cache.\n# TYPE switchyard_cache_bytes gauge\nswitchyard_cache_bytes {}",
            gateway.cache().local_bytes()
        );
        let registry = gateway.registry();
        let _ = writeln!(
            out,
            "# HELP switchyard_policy_loaded Whether a policy has a version serving (1) or not (0).\n# TYPE switchyard_policy_loaded gauge"
        );
        let _ = writeln!(out, "# HELP switchyard_policy_reload_failures Failed loads of a policy's files since start.\n# TYPE switchyard_policy_reload_failures counter");
        let _ = writeln!(
            out,
            "# HELP switchyard_policy_reloads Successful loads of a policy since start.\n# TYPE switchyard_policy_reloads counter"
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_policy_signature_refusals New versions of a policy refused for their signature since start.\n# TYPE switchyard_policy_signature_refusals counter"
        );
        for s in registry.statuses() {
            let name = escape(&s.name);
            let _ = writeln!(out, "switchyard_policy_loaded{{policy=\"{name}\"}} {}", u8::from(s.version.is_some()));
            let _ = writeln!(out, "switchyard_policy_reload_failures_total{{policy=\"{name}\"}} {}", s.failed_loads);
            let _ = writeln!(out, "switchyard_policy_reloads_total{{policy=\"{name}\"}} {}", s.loads);
            let _ = writeln!(out, "switchyard_policy_signature_refusals_total{{policy=\"{name}\"}} {}", s.signature_refusals);
        }
        if let Some(functions) = registry.runtime().function_cache_stats() {
            let _ = writeln!(
                out,
                "# HELP switchyard_policy_compiled_functions Functions of policy versions compiled, by whether their machine code was reused from an earlier compile or compiled anew.\n# TYPE switchyard_policy_compiled_functions counter"
            );
            for (result, n) in [("reused", functions.reused), ("compiled", functions.compiled)] {
                let _ = writeln!(out, "switchyard_policy_compiled_functions_total{{result=\"{result}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP switchyard_policy_function_cache_bytes Bytes of compiled functions kept for the next compile.\n# TYPE switchyard_policy_function_cache_bytes gauge\nswitchyard_policy_function_cache_bytes {}",
                functions.bytes
            );
        }
        if let Some(origin) = gateway.origin() {
            let st = origin.status();
            let _ = writeln!(out, "# HELP switchyard_policy_origin_polls Polls of the policy origin, by result.\n# TYPE switchyard_policy_origin_polls counter");
            for (result, n) in [("unchanged", st.unchanged), ("changed", st.changed), ("failed", st.failed)] {
                let _ = writeln!(out, "switchyard_policy_origin_polls_total{{result=\"{result}\"}} {n}");
            }
            let since = |t: Option<std::time::SystemTime>| {
                t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
            };
            let _ = writeln!(
                out,
                "# HELP switchyard_policy_origin_last_success_timestamp_seconds When a poll of the origin last succeeded (0: never).\n# TYPE switchyard_policy_origin_last_success_timestamp_seconds gauge\nswitchyard_policy_origin_last_success_timestamp_seconds {}",
                since(st.last_success_at)
            );
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &m.registry).unwrap();
        out
    }

    #[test]
    fn kept_series_count_into_their_families() {
        let m = Metrics::new();
        for _ in 0..2 {
            m.tokens("a", 10, 3, 0.5);
            m.attempt("a", "ok");
            m.decision("p", "v1", Duration::from_micros(5));
        }
        m.tokens("b", 1, 1, 0.0);
        m.attempt("a", "timeout");
        m.decision("p", "v2", Duration::from_micros(5));
        let out = text(&m);
        for line in [
            r#"switchyard_tokens_total{backend="a",direction="input"} 20"#,
            r#"switchyard_tokens_total{backend="a",direction="output"} 6"#,
            r#"switchyard_tokens_total{backend="b",direction="input"} 1"#,
            r#"switchyard_cost_micro_usd_total{backend="a"} 1000000"#,
            r#"switchyard_attempts_total{backend="a",outcome="ok"} 2"#,
            r#"switchyard_attempts_total{backend="a",outcome="timeout"} 1"#,
            r#"switchyard_policy_decision_seconds_count{policy="p",version="v1"} 2"#,
            r#"switchyard_policy_decision_seconds_count{policy="p",version="v2"} 1"#,
        ] {
            assert!(out.contains(line), "missing {line} in\n{out}");
        }
        // Series are made when first used: no stream, no time to first token.
        assert!(!out.contains("switchyard_ttft_seconds_count"), "{out}");
    }
}
