//! One loaded version of a policy: its linked component, its warm instances,
//! and the call that turns a request into a decision.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime};

use crossbeam_queue::ArrayQueue;
use futures_util::FutureExt;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{v0_1, PolicyBindings, PolicyBindingsPre};
use super::compat;
use super::decision::{validate, Decision};
use super::error::{PolicyError, PolicyErrorKind};
use super::guest_log::GuestLog;
use super::instance_state::InstanceState;
use super::runtime::{deadline_ticks, Deciders, EpochTicker, GuestRunning, PolicyRuntime, EPOCH_TICK};
use super::settings::InstanceMode;
use super::state::PolicyState;
use super::threads::{block_on_guest, Place};
use crate::contract::{self, idle_stats, Backend, BackendStats, Outcome, Request};

/// A linked component, ready to instantiate: of the current world, or of
/// 0.1 (served through `compat.rs`).
#[derive(Clone)]
pub(crate) enum Pre {
    Current(PolicyBindingsPre<InstanceState>),
    V0_1(v0_1::PolicyPre<InstanceState>),
}

/// An instance's exports, of its world.
enum Bindings {
    Current(PolicyBindings),
    V0_1(v0_1::Policy),
}

/// Most background jobs (outcomes, shadow decisions) waiting for, or on,
/// the background thread per version: past it they are dropped (and
/// counted).
const MAX_BACKGROUND_QUEUED: usize = 64;

/// Background failures in a row that bench a version's background work.
const BACKGROUND_FAILURES: u32 = 5;

/// How long benched background work is dropped.
const BACKGROUND_BENCH: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// `backends` as a 0.1 component takes them (empty for current ones).
    backends_0_1: Vec<v0_1::types::Backend>,
    loaded_at: SystemTime,
    pre: Pre,
    log: Arc<GuestLog>,
    state: Arc<PolicyState>,
    /// `init` asked for outcomes (`features.observe`).
    observes: AtomicBool,
    /// The instance `observe` runs on (on the background thread only): apart
    /// from the warm pool, so decisions never wait for it.
    observer: std::sync::Mutex<Option<WarmInstance>>,
    /// Cooled (kept for a rollback): used instances are dropped.
    retired: AtomicBool,
    /// What the guests' WASI random returns, derived from the version.
    random: Vec<u8>,
    warm: ArrayQueue<WarmInstance>,
    call_ticks: u64,
    init_ticks: u64,
    call_fuel: u64,
    init_fuel: u64,
    counters: Counters,
}

/// Counts of what happened to a version's calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCallStats {
    /// Decisions asked for.
    pub calls: u64,
    /// Calls that failed, by kind.
    pub failures: Vec<(PolicyErrorKind, u64)>,
    /// Instances created (at load, after a trap, after recycling).
    pub instances_created: u64,
    /// Fuel the successful `route` calls used, in all; divided by the
    /// successful calls it says how close a decision comes to its budget.
    pub fuel_used: u64,
    /// Log lines dropped by the rate limit.
    pub log_lines_dropped: u64,
    /// The version is quarantined right now.
    pub quarantined: bool,
    /// Outcomes given to `observe`.
    pub observed: u64,
    /// `observe` calls that failed (never fatal).
    pub observe_failures: u64,
    /// Outcomes dropped because too many were waiting.
    pub observe_dropped: u64,
}

const COUNTED_KINDS: [PolicyErrorKind; 8] = [
    PolicyErrorKind::Trap,
    PolicyErrorKind::Budget,
    PolicyErrorKind::Timeout,
    PolicyErrorKind::MemoryLimit,
    PolicyErrorKind::InvalidDecision,
    PolicyErrorKind::Instantiate,
    PolicyErrorKind::Quarantined,
    PolicyErrorKind::Overloaded,
];

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    failures: [AtomicU64; COUNTED_KINDS.len()],
    instances_created: AtomicU64,
    fuel_used: AtomicU64,
    consecutive_timeouts: AtomicU32,
    /// Milliseconds since `quarantine_epoch` until which calls are refused.
    quarantined_until_ms: AtomicU64,
    observed: AtomicU64,
    observe_failures: AtomicU64,
    observe_dropped: AtomicU64,
    /// Background jobs queued or running now.
    background: Arc<AtomicUsize>,
    background_failures_in_row: AtomicU32,
    /// Milliseconds (as `now_ms`) until which background work is dropped.
    background_benched_until_ms: AtomicU64,
}

impl LoadedPolicy {
    /// This version's code with another configuration or other backends:
    /// `init`, the probe and the warm pool again (a version activated by
    /// hand, given a reload's new inputs). The version string stays: it
    /// names the code.
    pub(crate) fn reinit(&self, config: &str, backends: &[Backend]) -> Result<Arc<LoadedPolicy>, PolicyError> {
        let policy = Arc::new(LoadedPolicy::new(
            self.runtime.clone(),
            &self.name,
            self.version.clone(),
            config,
            backends,
            self.pre.clone(),
            self.state.clone(),
        ));
        policy.probe_and_warm()?;
        Ok(policy)
    }

    pub(crate) fn new(
        runtime: PolicyRuntime,
        name: &str,
        version: String,
        config: &str,
        backends: &[Backend],
        pre: Pre,
        state: Arc<PolicyState>,
    ) -> Self {
        let settings = runtime.settings();
        let log = Arc::new(GuestLog::new(name, &version, settings.log_lines_per_second, settings.log_line_max_bytes));
        Self {
            call_ticks: deadline_ticks(settings.call_deadline),
            init_ticks: deadline_ticks(settings.init_deadline),
            call_fuel: settings.call_fuel,
            init_fuel: settings.init_fuel,
            warm: ArrayQueue::new(settings.warm_instances.max(1)),
            random: random_bytes(&version),
            runtime,
            name: name.to_owned(),
            version,
            config: config.to_owned(),
            backends: backends.to_vec(),
            backends_0_1: match pre {
                Pre::V0_1(_) => backends.iter().map(compat::backend).collect(),
                Pre::Current(_) => Vec::new(),
            },
            loaded_at: SystemTime::now(),
            pre,
            log,
            state,
            observes: AtomicBool::new(false),
            observer: std::sync::Mutex::new(None),
            retired: AtomicBool::new(false),
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

    /// The contract world the component targets.
    pub fn world(&self) -> &'static str {
        match self.pre {
            Pre::Current(_) => contract::WORLD,
            Pre::V0_1(_) => contract::WORLD_0_1,
        }
    }

    /// Whether the policy asked for outcomes (`observe`).
    pub fn observes(&self) -> bool {
        self.observes.load(Ordering::Relaxed)
    }

    /// Hands `outcome` to the policy's `observe` on the background thread, when it
    /// asked for outcomes; returns at once. Dropped (and counted) when too
    /// many are waiting or the threads' queue is full; a failure is counted
    /// and the instance dropped, never more.
    pub fn observe(self: &Arc<Self>, outcome: Outcome) {
        if !self.observes() {
            return;
        }
        let version = self.clone();
        if !self.in_background(move || version.observe_here(&outcome)) {
            self.counters.observe_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Decides `request` on the background thread and hands the result to
    /// `done` there: a shadow's decision, never on a request's path.
    /// Returns false, without deciding, when too many are waiting (or the
    /// version's background work is benched).
    pub fn decide_in_background(
        self: &Arc<Self>,
        request: Arc<Request>,
        stats: Vec<BackendStats>,
        done: impl FnOnce(Result<Decision, PolicyError>) + Send + 'static,
    ) -> bool {
        let version = self.clone();
        self.in_background(move || {
            let decided = block_on_guest(version.decide_here(&request, &stats));
            version.background_went(decided.is_ok());
            done(decided)
        })
    }

    /// Runs `job` on the background thread, within this version's bound.
    /// Benched after failing repeatedly, or too many waiting: dropped.
    fn in_background(&self, job: impl FnOnce() + Send + 'static) -> bool {
        if now_ms() < self.counters.background_benched_until_ms.load(Ordering::Relaxed) {
            return false;
        }
        let Some(slot) = Place::take(&self.counters.background, MAX_BACKGROUND_QUEUED) else {
            return false;
        };
        let job = Box::new(move || {
            let _slot = slot;
            job();
        });
        // A refused job is dropped here, and its slot with it.
        self.runtime.inner.background.submit(job).is_ok()
    }

    /// Notes how a background job went: after [`BACKGROUND_FAILURES`]
    /// failures in a row the version's background work is benched for
    /// [`BACKGROUND_BENCH`], so that one broken `observe` or shadow does not
    /// hold the background thread that every policy shares.
    fn background_went(&self, ok: bool) {
        let c = &self.counters;
        if ok {
            c.background_failures_in_row.store(0, Ordering::Relaxed);
        } else if c.background_failures_in_row.fetch_add(1, Ordering::Relaxed) + 1 >= BACKGROUND_FAILURES {
            c.background_failures_in_row.store(0, Ordering::Relaxed);
            c.background_benched_until_ms.store(now_ms() + BACKGROUND_BENCH.as_millis() as u64, Ordering::Relaxed);
            tracing::warn!(policy = %self.name, version = %self.version, "background calls (observe, shadow) failed {BACKGROUND_FAILURES} times in a row: benched for {} s", BACKGROUND_BENCH.as_secs());
        }
    }

    /// Drops the warm instances and keeps none from now on: a version kept
    /// for a rollback holds none ([`Self::probe_and_warm`] makes them again).
    pub fn cool(&self) {
        self.retired.store(true, Ordering::Release);
        while self.warm.pop().is_some() {}
        *self.observer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Whether a used instance goes back to the pool (not once cooled).
    fn keeps_instances(&self) -> bool {
        !self.retired.load(Ordering::Acquire)
    }

    /// One `observe` call on the observer instance (a new one after a
    /// failure), under the call's fuel and backstop.
    fn observe_here(&self, outcome: &Outcome) {
        self.counters.observed.fetch_add(1, Ordering::Relaxed);
        let result = block_on_guest(async {
            // Only the background thread takes the observer, so the slot is
            // not locked while the guest runs.
            let taken = self.observer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            let mut instance = match taken {
                Some(instance) => instance,
                None => self.probed_instance().await?,
            };
            instance.observe(&self.name, outcome, self.call_ticks, self.call_fuel).await?;
            let mut slot = self.observer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Looked at under the lock, which `cool` takes too.
            if self.keeps_instances() {
                *slot = Some(instance);
            }
            Ok::<_, PolicyError>(())
        });
        self.background_went(result.is_ok());
        if let Err(e) = result {
            self.counters.observe_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(policy = %self.name, version = %self.version, "observe failed: {e}");
        }
    }

    /// Asks the policy where `request` should go, given the live `stats` of
    /// [`Self::backends`] (`stats[i]` belongs to `backends()[i]`), on the
    /// calling thread, or on a thread of its own when called inside a tokio
    /// runtime. Never panics and never runs past the call's fuel or its
    /// backstop (plus instantiation when no warm instance is free); every
    /// failure is a [`PolicyError`]. The server uses [`Self::decide_async`].
    pub fn decide(&self, request: &Request, stats: &[BackendStats]) -> Result<Decision, PolicyError> {
        outside_tokio(&self.name, || block_on_guest(self.decide_here(request, stats)))
    }

    /// [`Self::decide`] for async callers, where the settings' `decide_on`
    /// says: on this task, in a fiber that yields to the worker's other
    /// tasks once it has run a tick, or on a policy thread while the task
    /// awaits. The stats come back with the decision (for the decision
    /// log). Fails at once as [`PolicyErrorKind::Overloaded`] when `threads`
    /// decisions run and `queue` wait; a request dropped while it waits is
    /// not decided, and one dropped while its guest yields loses only its
    /// instance.
    pub async fn decide_async(
        self: &Arc<Self>,
        request: Arc<Request>,
        stats: Vec<BackendStats>,
    ) -> Result<(Decision, Vec<BackendStats>), PolicyError> {
        let overloaded = || {
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
            self.count_failure(PolicyErrorKind::Overloaded);
            PolicyError::new(PolicyErrorKind::Overloaded, &self.name, "every decision slot is busy and the queue is full")
        };
        match &self.runtime.inner.deciders {
            Deciders::Worker(turns) => {
                let Some(_turn) = turns.take().await else {
                    return Err(overloaded());
                };
                // A panic here is a bug of ours (guest failures are errors):
                // it fails this decision, not the connection.
                let decided = AssertUnwindSafe(self.decide_here(&request, &stats)).catch_unwind().await.unwrap_or_else(|_| {
                    tracing::error!(policy = %self.name, "a policy call panicked");
                    Err(PolicyError::new(PolicyErrorKind::Runtime, &self.name, "the policy call panicked"))
                });
                decided.map(|d| (d, stats))
            }
            Deciders::Threads(threads) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let version = self.clone();
                let job = Box::new(move || {
                    if !tx.is_closed() {
                        let result = block_on_guest(version.decide_here(&request, &stats));
                        let _ = tx.send(result.map(|d| (d, stats)));
                    }
                });
                if threads.submit(job).is_err() {
                    return Err(overloaded());
                }
                rx.await
                    .unwrap_or_else(|_| Err(PolicyError::new(PolicyErrorKind::Runtime, &self.name, "the policy thread dropped the call")))
            }
        }
    }

    async fn decide_here(&self, request: &Request, stats: &[BackendStats]) -> Result<Decision, PolicyError> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        if stats.len() != self.backends.len() {
            return Err(PolicyError::new(
                PolicyErrorKind::Runtime,
                &self.name,
                format!("stats for {} backends given, the version was loaded with {}", stats.len(), self.backends.len()),
            ));
        }
        let result =
            self.decide_raw(request, stats).await.and_then(|raw| validate(&self.name, raw, &self.backends, self.runtime.settings()));
        if let Err(e) = &result {
            self.count_failure(e.kind());
        }
        result
    }

    async fn decide_raw(&self, request: &Request, stats: &[BackendStats]) -> Result<contract::Decision, PolicyError> {
        self.check_quarantine()?;
        let settings = self.runtime.settings();
        let mut instance = match settings.instance_mode {
            InstanceMode::Pooled => match self.warm.pop() {
                Some(instance) => instance,
                None => self.probed_instance().await?,
            },
            InstanceMode::Fresh => self.instantiate().await?,
        };
        match instance.route(&self.name, request, stats, self.call_ticks, self.call_fuel).await {
            Ok((decision, fuel)) => {
                self.counters.fuel_used.fetch_add(fuel, Ordering::Relaxed);
                self.counters.consecutive_timeouts.store(0, Ordering::Relaxed);
                if settings.instance_mode == InstanceMode::Pooled && instance.calls < settings.recycle_after && self.keeps_instances() {
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
    /// request. A policy that traps, runs out of fuel or memory here is not
    /// loaded; an answer the backends cannot satisfy is fine. Then, in
    /// pooled mode, fills the warm pool, so that requests find instances ready.
    pub(crate) fn probe_and_warm(&self) -> Result<(), PolicyError> {
        self.retired.store(false, Ordering::Release);
        outside_tokio(&self.name, || {
            block_on_guest(async {
                let first = self.probed_instance().await?;
                if self.runtime.settings().instance_mode == InstanceMode::Pooled {
                    let _ = self.warm.push(first);
                    while self.warm.len() < self.warm.capacity() {
                        let _ = self.warm.push(self.probed_instance().await?);
                    }
                }
                Ok(())
            })
        })
    }

    /// A new instance that has made the probe decision. Every warm instance
    /// starts from this same history, so the same request costs the same
    /// fuel on any of them while they are young (lazy set-up, such as
    /// compiling regular expressions, happens in the probe for all alike).
    async fn probed_instance(&self) -> Result<WarmInstance, PolicyError> {
        let stats = vec![idle_stats(); self.backends.len()];
        let mut instance = self.instantiate().await?;
        instance.route(&self.name, &probe_request(), &stats, self.call_ticks, self.call_fuel).await?;
        Ok(instance)
    }

    /// A snapshot of this version's counters.
    pub fn call_stats(&self) -> PolicyCallStats {
        let c = &self.counters;
        PolicyCallStats {
            calls: c.calls.load(Ordering::Relaxed),
            failures: COUNTED_KINDS.iter().zip(&c.failures).map(|(k, n)| (*k, n.load(Ordering::Relaxed))).filter(|(_, n)| *n > 0).collect(),
            instances_created: c.instances_created.load(Ordering::Relaxed),
            fuel_used: c.fuel_used.load(Ordering::Relaxed),
            log_lines_dropped: self.log.dropped(),
            quarantined: now_ms() < c.quarantined_until_ms.load(Ordering::Relaxed),
            observed: c.observed.load(Ordering::Relaxed),
            observe_failures: c.observe_failures.load(Ordering::Relaxed),
            observe_dropped: c.observe_dropped.load(Ordering::Relaxed),
        }
    }

    async fn instantiate(&self) -> Result<WarmInstance, PolicyError> {
        self.counters.instances_created.fetch_add(1, Ordering::Relaxed);
        let settings = self.runtime.settings();
        let idle = vec![idle_stats(); self.backends.len()];
        let state = InstanceState::new(self.log.clone(), settings.memory_limit, &self.random, idle, self.state.clone());
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|state| state);
        let ticker = self.runtime.inner.ticker.clone();
        store.epoch_deadline_callback(move |store| on_epoch_tick(store, ticker.now()));
        let _running = self.runtime.inner.ticker.guest_running();
        arm_backstop(&mut store, &self.runtime.inner.ticker, self.init_ticks);
        let deadline = backstop_instant(self.init_ticks);
        let waited_too_long = || waited_past_backstop(&self.name);
        store.set_fuel(self.init_fuel).map_err(|e| classify(&self.name, &store, e, PolicyErrorKind::Runtime))?;
        let (bindings, init) = match &self.pre {
            Pre::Current(pre) => {
                let bindings = match within_backstop(deadline, pre.instantiate_async(&mut store)).await.ok_or_else(waited_too_long)? {
                    Ok(bindings) => bindings,
                    Err(e) => return Err(classify(&self.name, &store, e, PolicyErrorKind::Instantiate)),
                };
                let init = within_backstop(deadline, bindings.call_init(&mut store, &self.config, &self.backends));
                let init = init.await.ok_or_else(waited_too_long)?.map(|r| {
                    r.map(|features| {
                        if features.contains(contract::Features::OBSERVE) {
                            self.observes.store(true, Ordering::Relaxed);
                        }
                    })
                });
                (Bindings::Current(bindings), init)
            }
            Pre::V0_1(pre) => {
                let bindings = match within_backstop(deadline, pre.instantiate_async(&mut store)).await.ok_or_else(waited_too_long)? {
                    Ok(bindings) => bindings,
                    Err(e) => return Err(classify(&self.name, &store, e, PolicyErrorKind::Instantiate)),
                };
                let init = within_backstop(deadline, bindings.call_init(&mut store, &self.config, &self.backends_0_1));
                let init = init.await.ok_or_else(waited_too_long)?;
                (Bindings::V0_1(bindings), init)
            }
        };
        match init {
            Ok(Ok(())) => Ok(WarmInstance { store, bindings, calls: 0, ticker: self.runtime.inner.ticker.clone() }),
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
                format!("version {} ran past its wall-clock backstop repeatedly and is benched for a while", self.version),
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
            tracing::warn!(policy = %self.name, version = %self.version, "policy quarantined after {streak} backstop hits in a row");
        }
    }

    fn count_failure(&self, kind: PolicyErrorKind) {
        if let Some(i) = COUNTED_KINDS.iter().position(|k| *k == kind) {
            self.counters.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// 1 KiB of WASI randomness for a version: BLAKE3's output stream keyed by
/// the version's hash, the same on every instance and every run.
fn random_bytes(version: &str) -> Vec<u8> {
    let mut bytes = vec![0; 1024];
    blake3::Hasher::new_derive_key("switchyard policy wasi random").update(version.as_bytes()).finalize_xof().fill(&mut bytes);
    bytes
}

/// Milliseconds on a process-wide monotonic clock (never 0 after start).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One instantiated policy with its store.
struct WarmInstance {
    store: Store<InstanceState>,
    /// Keeps the epoch advancing while this instance's guest code runs.
    ticker: Arc<EpochTicker>,
    bindings: Bindings,
    calls: u64,
}

impl WarmInstance {
    /// One `route` call under `ticks` of wall clock and `fuel`; answers the
    /// decision and the fuel it used.
    async fn route(
        &mut self,
        name: &str,
        request: &Request,
        stats: &[BackendStats],
        ticks: u64,
        fuel: u64,
    ) -> Result<(contract::Decision, u64), PolicyError> {
        let _running = self.prepare(name, ticks, fuel)?;
        let deadline = backstop_instant(ticks);
        let decision = match &self.bindings {
            Bindings::Current(bindings) => {
                // The `host` imports read this call's snapshot.
                let snapshot = &mut self.store.data_mut().stats;
                snapshot.clear();
                snapshot.extend_from_slice(stats);
                within_backstop(deadline, bindings.call_route(&mut self.store, request)).await
            }
            Bindings::V0_1(bindings) => {
                let stats: Vec<_> = stats.iter().map(compat::stats).collect();
                within_backstop(deadline, bindings.call_route(&mut self.store, &compat::request(request), &stats))
                    .await
                    .map(|d| d.map(compat::decision))
            }
        };
        let decision = decision.ok_or_else(|| waited_past_backstop(name))?;
        let decision = decision.map_err(|e| classify(name, &self.store, e, PolicyErrorKind::Trap))?;
        let left = self.store.get_fuel().unwrap_or(fuel);
        Ok((decision, fuel.saturating_sub(left)))
    }

    /// One `observe` call (current-world instances only).
    async fn observe(&mut self, name: &str, outcome: &Outcome, ticks: u64, fuel: u64) -> Result<(), PolicyError> {
        let _running = self.prepare(name, ticks, fuel)?;
        match &self.bindings {
            Bindings::Current(bindings) => {
                let observed = within_backstop(backstop_instant(ticks), bindings.call_observe(&mut self.store, outcome));
                observed.await.ok_or_else(|| waited_past_backstop(name))?.map_err(|e| classify(name, &self.store, e, PolicyErrorKind::Trap))
            }
            Bindings::V0_1(_) => Ok(()),
        }
    }

    /// Resets the per-call state: a reused store keeps its old deadline and
    /// fuel, so both are set before every call. The guard returned keeps
    /// the epoch advancing: the caller holds it while its guest code runs.
    fn prepare(&mut self, name: &str, ticks: u64, fuel: u64) -> Result<GuestRunning, PolicyError> {
        self.calls += 1;
        self.store.data_mut().memory_limit_hit = false;
        self.store.data().stderr_tail.clear();
        let running = self.ticker.guest_running();
        arm_backstop(&mut self.store, &self.ticker, ticks);
        self.store.set_fuel(fuel).map_err(|e| classify(name, &self.store, e, PolicyErrorKind::Runtime))?;
        Ok(running)
    }
}

/// When a call of `ticks` started now reaches its backstop.
fn backstop_instant(ticks: u64) -> Instant {
    Instant::now() + EPOCH_TICK * u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Runs a guest call to its end, or `None` at `deadline`. The epoch ends a
/// call whose guest code runs past its backstop, but not one suspended in
/// a host call (a guest's sleep): for that, a timer, set only once the call
/// first waits, so that a call done in one go costs none.
async fn within_backstop<T>(deadline: Instant, call: impl Future<Output = T>) -> Option<T> {
    let mut call = pin!(call);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The error of a call that [`within_backstop`] ended.
fn waited_past_backstop(name: &str) -> PolicyError {
    PolicyError::new(PolicyErrorKind::Timeout, name, "the guest ran past its wall-clock backstop (waiting in a host call)")
}

/// Sets a call's backstop `ticks` from now, as an absolute epoch: the time
/// the call spends suspended (yielded, or waiting on a host call such as a
/// guest's sleep) counts too.
fn arm_backstop(store: &mut Store<InstanceState>, ticker: &EpochTicker, ticks: u64) {
    let now = ticker.now();
    let state = store.data_mut();
    state.backstop_at = now + ticks;
    state.ticks_run = 0;
    store.set_epoch_deadline(1);
}

/// At every epoch tick while guest code runs (`now`, the ticker's epoch):
/// ends the call once its backstop has passed; else, once the call has run
/// a whole tick, yields to the executor, so that the worker's other tasks
/// run. Run time is counted in these checks, which only running guest code
/// makes: a call that merely spans one tick, or that its thread's
/// preemption stretched, goes on, since yielding it would hold its
/// instance and turn behind every task of a busy worker.
fn on_epoch_tick(mut store: wasmtime::StoreContextMut<'_, InstanceState>, now: u64) -> wasmtime::Result<UpdateDeadline> {
    let state = store.data_mut();
    if now >= state.backstop_at {
        return Ok(UpdateDeadline::Interrupt);
    }
    state.ticks_run += 1;
    if state.ticks_run < 2 {
        return Ok(UpdateDeadline::Continue(1));
    }
    // A plain `Yield` does not let the worker's other tasks run; tokio's
    // own yield does.
    Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
}

/// Runs `f`, which blocks on guest code ([`block_on_guest`]), outside any
/// tokio runtime: blocking on a runtime's thread panics. Inside a runtime,
/// `f` runs on a thread of its own; the server never gets here that way
/// (its decisions are async), only loads and tools do.
fn outside_tokio<T: Send>(name: &str, f: impl FnOnce() -> Result<T, PolicyError> + Send) -> Result<T, PolicyError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match std::thread::Builder::new().name("policy-call".into()).spawn_scoped(s, f) {
        Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        Err(e) => Err(PolicyError::new(PolicyErrorKind::Runtime, name, format!("cannot start a thread for the call: {e}"))),
    })
}

/// Turns a wasmtime error from a call into a [`PolicyError`].
fn classify(name: &str, store: &Store<InstanceState>, error: wasmtime::Error, otherwise: PolicyErrorKind) -> PolicyError {
    if store.data().memory_limit_hit {
        return PolicyError::new(PolicyErrorKind::MemoryLimit, name, format!("the guest tried to grow its memory past the cap: {error}"));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PolicyError::new(PolicyErrorKind::Budget, name, "the guest used up its fuel (instruction budget)"),
        Some(Trap::Interrupt) => PolicyError::new(PolicyErrorKind::Timeout, name, "the guest ran past its wall-clock backstop"),
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

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy").field("name", &self.name).field("version", &self.version).finish_non_exhaustive()
    }
}
