//! One loaded version of a policy: its linked component, its warm instances,
//! and the call that turns a request into a decision.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_queue::ArrayQueue;
use wasmtime::{Store, Trap};

use super::contract::{self, Backend, BackendStats, PolicyBindings, PolicyBindingsPre, Request};
use super::decision::{validate, Decision};
use super::error::{PolicyError, PolicyErrorKind};
use super::guest_log::GuestLog;
use super::instance_state::InstanceState;
use super::runtime::{deadline_ticks, PolicyRuntime};
use super::settings::InstanceMode;

/// A policy version that passed compilation, `init` and the probe call.
///
/// Callers hold it through an `Arc`: a request that started on a version
/// finishes on it, even if a newer version replaces it meanwhile.
pub struct LoadedPolicy {
    runtime: PolicyRuntime,
    name: String,
    version: String,
    config: String,
    backends: Vec<Backend>,
    loaded_at: SystemTime,
    pre: PolicyBindingsPre<InstanceState>,
    log: Arc<GuestLog>,
    warm: ArrayQueue<WarmInstance>,
    call_ticks: u64,
    init_ticks: u64,
    counters: Counters,
}

/// Counts of what happened to a version's calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCallStats {
    /// Decisions asked for.
    pub calls: u64,
    /// Calls that failed, by kind.
    pub failures: Vec<(PolicyErrorKind, u64)>,
    /// Instances created (first use, after a trap, after recycling).
    pub instances_created: u64,
    /// Log lines dropped by the rate limit.
    pub log_lines_dropped: u64,
    /// The version is quarantined right now.
    pub quarantined: bool,
}

const COUNTED_KINDS: [PolicyErrorKind; 6] = [
    PolicyErrorKind::Trap,
    PolicyErrorKind::Timeout,
    PolicyErrorKind::MemoryLimit,
    PolicyErrorKind::InvalidDecision,
    PolicyErrorKind::Instantiate,
    PolicyErrorKind::Quarantined,
];

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    failures: [AtomicU64; COUNTED_KINDS.len()],
    instances_created: AtomicU64,
    consecutive_timeouts: AtomicU32,
    /// Milliseconds since `quarantine_epoch` until which calls are refused.
    quarantined_until_ms: AtomicU64,
}

impl LoadedPolicy {
    pub(crate) fn new(
        runtime: PolicyRuntime,
        name: &str,
        version: String,
        config: &str,
        backends: &[Backend],
        pre: PolicyBindingsPre<InstanceState>,
    ) -> Self {
        let settings = runtime.settings();
        let log = Arc::new(GuestLog::new(name, &version, settings.log_lines_per_second, settings.log_line_max_bytes));
        Self {
            call_ticks: deadline_ticks(settings.call_deadline),
            init_ticks: deadline_ticks(settings.init_deadline),
            warm: ArrayQueue::new(settings.warm_instances.max(1)),
            runtime,
            name: name.to_owned(),
            version,
            config: config.to_owned(),
            backends: backends.to_vec(),
            loaded_at: SystemTime::now(),
            pre,
            log,
            counters: Counters::default(),
        }
    }

    /// The policy's name (its file name without `.wasm`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version: a hash of the component's bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The configuration `init` accepted.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The backends this version was initialised with; `decide` takes their
    /// stats in this order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// When this version was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Asks the policy where `request` should go, given the live `stats` of
    /// [`Self::backends`] (`stats[i]` belongs to `backends()[i]`). Never
    /// panics and never blocks past the call deadline (plus instantiation when
    /// no warm instance is free); every failure is a [`PolicyError`].
    pub fn decide(&self, request: &Request, stats: &[BackendStats]) -> Result<Decision, PolicyError> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        if stats.len() != self.backends.len() {
            return Err(PolicyError::new(
                PolicyErrorKind::Runtime,
                &self.name,
                format!("stats for {} backends given, the version was loaded with {}", stats.len(), self.backends.len()),
            ));
        }
        let result = self.decide_raw(request, stats).and_then(|raw| validate(&self.name, raw, &self.backends, self.runtime.settings()));
        if let Err(e) = &result {
            self.count_failure(e.kind());
        }
        result
    }

    fn decide_raw(&self, request: &Request, stats: &[BackendStats]) -> Result<contract::Decision, PolicyError> {
        self.check_quarantine()?;
        let settings = self.runtime.settings();
        let mut instance = match (settings.instance_mode, self.warm.pop()) {
            (InstanceMode::Pooled, Some(instance)) => instance,
            _ => self.instantiate()?,
        };
        match instance.route(&self.name, request, stats, self.call_ticks) {
            Ok(decision) => {
                self.counters.consecutive_timeouts.store(0, Ordering::Relaxed);
                if settings.instance_mode == InstanceMode::Pooled && instance.calls < settings.recycle_after {
                    // A full pool drops the instance: that bounds the number kept.
                    let _ = self.warm.push(instance);
                }
                Ok(decision)
            }
            // The instance may hold broken state after a trap: it is dropped here.
            Err(e) => {
                if e.kind() == PolicyErrorKind::Timeout {
                    self.note_timeout();
                }
                Err(e)
            }
        }
    }

    /// Instantiates and initialises, then makes one decision for a synthetic
    /// request. A policy that traps, times out or runs out of memory here is
    /// not loaded; an answer the backends cannot satisfy is fine.
    pub(crate) fn probe(&self) -> Result<(), PolicyError> {
        let request = probe_request();
        let stats = vec![idle_stats(); self.backends.len()];
        let mut instance = self.instantiate()?;
        instance.route(&self.name, &request, &stats, self.call_ticks)?;
        let _ = self.warm.push(instance);
        Ok(())
    }

    /// A snapshot of this version's counters.
    pub fn call_stats(&self) -> PolicyCallStats {
        let c = &self.counters;
        PolicyCallStats {
            calls: c.calls.load(Ordering::Relaxed),
            failures: COUNTED_KINDS.iter().zip(&c.failures).map(|(k, n)| (*k, n.load(Ordering::Relaxed))).filter(|(_, n)| *n > 0).collect(),
            instances_created: c.instances_created.load(Ordering::Relaxed),
            log_lines_dropped: self.log.dropped(),
            quarantined: now_ms() < c.quarantined_until_ms.load(Ordering::Relaxed),
        }
    }

    fn instantiate(&self) -> Result<WarmInstance, PolicyError> {
        self.counters.instances_created.fetch_add(1, Ordering::Relaxed);
        let settings = self.runtime.settings();
        let mut store = Store::new(&self.runtime.inner.engine, InstanceState::new(self.log.clone(), settings.memory_limit));
        store.limiter(|state| state);
        store.set_epoch_deadline(self.init_ticks);
        let bindings = self.pre.instantiate(&mut store).map_err(|e| classify(&self.name, &store, e, PolicyErrorKind::Instantiate))?;
        match bindings.call_init(&mut store, &self.config, &self.backends) {
            Ok(Ok(())) => Ok(WarmInstance { store, bindings, calls: 0 }),
            Ok(Err(refusal)) => Err(PolicyError::new(PolicyErrorKind::ConfigRefused, &self.name, refusal)),
            Err(e) => Err(classify(&self.name, &store, e, PolicyErrorKind::Trap)),
        }
    }

    fn check_quarantine(&self) -> Result<(), PolicyError> {
        let until = self.counters.quarantined_until_ms.load(Ordering::Relaxed);
        if until != 0 && now_ms() < until {
            return Err(PolicyError::new(
                PolicyErrorKind::Quarantined,
                &self.name,
                format!("version {} hit its deadline repeatedly and is benched for a while", self.version),
            ));
        }
        Ok(())
    }

    fn note_timeout(&self) {
        let settings = self.runtime.settings();
        let streak = self.counters.consecutive_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= settings.quarantine_after {
            self.counters.consecutive_timeouts.store(0, Ordering::Relaxed);
            let until = now_ms() + settings.quarantine_for.as_millis() as u64;
            self.counters.quarantined_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(policy = %self.name, version = %self.version, "policy quarantined after {streak} deadline hits in a row");
        }
    }

    fn count_failure(&self, kind: PolicyErrorKind) {
        if let Some(i) = COUNTED_KINDS.iter().position(|k| *k == kind) {
            self.counters.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Milliseconds on a process-wide monotonic clock (never 0 after start).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One instantiated policy with its store.
struct WarmInstance {
    store: Store<InstanceState>,
    bindings: PolicyBindings,
    calls: u64,
}

impl WarmInstance {
    fn route(&mut self, name: &str, request: &Request, stats: &[BackendStats], ticks: u64) -> Result<contract::Decision, PolicyError> {
        self.calls += 1;
        self.store.data_mut().memory_limit_hit = false;
        self.store.data().stderr_tail.clear();
        // A reused store keeps its old deadline: set it before every call.
        self.store.set_epoch_deadline(ticks);
        self.bindings.call_route(&mut self.store, request, stats).map_err(|e| classify(name, &self.store, e, PolicyErrorKind::Trap))
    }
}

/// Turns a wasmtime error from a call into a [`PolicyError`].
fn classify(name: &str, store: &Store<InstanceState>, error: wasmtime::Error, otherwise: PolicyErrorKind) -> PolicyError {
    if store.data().memory_limit_hit {
        return PolicyError::new(PolicyErrorKind::MemoryLimit, name, format!("the guest tried to grow its memory past the cap: {error}"));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PolicyError::new(PolicyErrorKind::Timeout, name, "the guest ran past its deadline"),
        Some(trap) => PolicyError::new(PolicyErrorKind::Trap, name, with_stderr(format!("the guest trapped: {trap}"), store)),
        None => PolicyError::new(otherwise, name, with_stderr(format!("{error:#}"), store)),
    }
}

/// `message`, followed by what the guest last wrote to stderr, if anything.
fn with_stderr(message: String, store: &Store<InstanceState>) -> String {
    match store.data().stderr_tail.joined() {
        tail if tail.is_empty() => message,
        tail => format!("{message}; its stderr: {tail}"),
    }
}

/// The synthetic request of the probe call.
fn probe_request() -> Request {
    use contract::*;
    Request {
        id: "probe".into(),
        model: "auto".into(),
        surface: ApiSurface::Chat,
        stream: false,
        messages: vec![Message {
            role: Role::User,
            text: "Hello!".into(),
            text_bytes: 6,
            has_image: false,
            has_audio: false,
            has_file: false,
            has_tool_calls: false,
        }],
        total_text_bytes: 6,
        input_tokens: 2,
        max_output_tokens: None,
        tools: vec![],
        json_mode: false,
        caller: Caller { key_name: None, user: None },
        tags: vec![],
        seed: 0x5eed,
    }
}

/// Stats of a backend that has not served anything yet.
pub fn idle_stats() -> BackendStats {
    BackendStats {
        circuit: contract::CircuitState::Closed,
        in_flight: 0,
        latency_p50_ms: 0.0,
        latency_p95_ms: 0.0,
        ttft_ms: 0.0,
        error_rate: 0.0,
        samples: 0,
    }
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy").field("name", &self.name).field("version", &self.version).finish_non_exhaustive()
    }
}
