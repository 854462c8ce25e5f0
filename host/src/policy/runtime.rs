//! The policy runtime: one wasmtime engine, linker and epoch ticker per
//! process, and the steps that turn a policy file into a loaded version.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{v0_1, PolicyBindings, PolicyBindingsPre};
use super::error::{PolicyError, PolicyErrorKind};
use super::function_cache::{FunctionCache, FunctionCacheStats};
use super::instance_state::InstanceState;
use super::settings::{DecideOn, RuntimeSettings};
use super::state::PolicyState;
use super::threads::PolicyThreads;
use super::turns::Turns;
use super::version::{LoadedPolicy, Pre};
use crate::contract::{Backend, WORLD, WORLD_0_1};

/// Jobs waiting for the background thread, all policies together.
const BACKGROUND_QUEUE: usize = 256;

/// How often the epoch advances; the unit of every deadline.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks with no guest code running after which the ticker sleeps until
/// some runs again: an idle node is not woken a thousand times a second.
const IDLE_TICKS_BEFORE_SLEEP: u32 = 1000;

/// The process-wide policy runtime. Cheap to clone.
#[derive(Clone)]
pub struct PolicyRuntime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<InstanceState>,
    pub(crate) settings: RuntimeSettings,
    /// Where the decisions of [`LoadedPolicy::decide_async`] run.
    pub(crate) deciders: Deciders,
    /// Where [`LoadedPolicy::observe`] and
    /// [`LoadedPolicy::decide_in_background`] run.
    pub(crate) background: PolicyThreads,
    /// Key of compiled artifacts for this engine's settings.
    engine_key: u64,
    pub(crate) ticker: Arc<EpochTicker>,
    /// Each policy's state, by policy name: kept across versions.
    states: std::sync::Mutex<std::collections::HashMap<String, Arc<PolicyState>>>,
    /// Compiled functions kept for the next compile (Cranelift's incremental cache).
    function_cache: Option<Arc<FunctionCache>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// Where the server's decisions run ([`DecideOn`]).
pub(crate) enum Deciders {
    /// On the calling task, one of `threads` turns at a time.
    Worker(Turns),
    /// On the policy threads.
    Threads(PolicyThreads),
}

/// What `switchyard policy check` reports about a component.
#[derive(Debug, Clone)]
pub struct ComponentReport {
    /// Content hash of the file (hex, 16 characters).
    pub hash: String,
    /// Size of the file in bytes.
    pub size: usize,
    /// The component's imports (WASI interfaces and our `host`).
    pub imports: Vec<String>,
    /// The component's exports.
    pub exports: Vec<String>,
    /// The contract world it targets.
    pub world: &'static str,
}

impl PolicyRuntime {
    /// Builds the engine, the linker, the epoch ticker and the policy threads.
    pub fn new(settings: RuntimeSettings) -> Result<Self, PolicyError> {
        let runtime_err = |e: wasmtime::Error| PolicyError::new(PolicyErrorKind::Runtime, "-", format!("{e:#}"));
        let mut config = Config::new();
        // Fuel is the budget (deterministic); the epoch deadline is the
        // wall-clock backstop.
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.memory_reservation(MEMORY_RESERVATION);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(&settings)));
        let function_cache = (settings.function_cache_bytes > 0).then(|| Arc::new(FunctionCache::new(settings.function_cache_bytes)));
        if let Some(cache) = &function_cache {
            config.enable_incremental_compilation(cache.clone()).map_err(runtime_err)?;
        }
        let engine = Engine::new(&config).map_err(|e| {
            // The pool is the usual cause: it reserves address space (not
            // memory) for every linear memory up front.
            let reserved_gib = u64::from(POOL_MEMORIES) * (MEMORY_RESERVATION >> 30);
            PolicyError::new(
                PolicyErrorKind::Runtime,
                "-",
                format!(
                    "cannot start the policy engine: {e:#} (its instance pool reserves address space, not memory, \
                     for {POOL_MEMORIES} linear memories: about {reserved_gib} GiB; an address-space limit \
                     (`ulimit -v`, RLIMIT_AS) must allow it)"
                ),
            )
        })?;

        let mut linker = Linker::new(&engine);
        // Async: guest calls run on fibers that can yield at epoch ticks,
        // and a guest's stdio never blocks on a runtime.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(runtime_err)?;
        PolicyBindings::add_to_linker::<InstanceState, HasSelf<InstanceState>>(&mut linker, |s| s).map_err(runtime_err)?;
        v0_1::Policy::add_to_linker::<InstanceState, HasSelf<InstanceState>>(&mut linker, |s| s).map_err(runtime_err)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hasher.finish();

        let thread_err = |e: std::io::Error| PolicyError::new(PolicyErrorKind::Runtime, "-", format!("cannot start a thread: {e}"));
        let ticker = EpochTicker::start(engine.clone()).map_err(thread_err)?;
        let deciders = match settings.decide_on {
            DecideOn::Worker => Deciders::Worker(Turns::new(settings.threads, settings.queue, settings.call_deadline)),
            DecideOn::Threads => Deciders::Threads(PolicyThreads::start("policy", settings.threads, settings.queue).map_err(thread_err)?),
        };
        // Outcomes and shadow decisions get a thread of their own: a slow
        // one never holds up a decision queued behind it.
        let background = PolicyThreads::start("policy-background", 1, BACKGROUND_QUEUE).map_err(thread_err)?;

        let states = std::sync::Mutex::default();
        Ok(Self {
            inner: Arc::new(RuntimeInner { engine, linker, settings, deciders, background, engine_key, ticker, states, function_cache }),
        })
    }

    /// What the compiled-function cache has done (`None` when it is off).
    pub fn function_cache_stats(&self) -> Option<FunctionCacheStats> {
        self.inner.function_cache.as_ref().map(|c| c.stats())
    }

    /// The settings this runtime was built with.
    pub fn settings(&self) -> &RuntimeSettings {
        &self.inner.settings
    }

    /// Compiles `bytes` (or loads them from the artifact cache), checks that
    /// they target our world, runs `init` with `config` and `backends`, and
    /// makes one probe decision under the limits, then fills the warm pool.
    /// Only a policy that passes every step is returned.
    pub fn load(&self, name: &str, bytes: &[u8], config: &str, backends: &[Backend]) -> Result<Arc<LoadedPolicy>, PolicyError> {
        let hash = content_hash(bytes);
        let component = self.compile(name, bytes, &hash)?;
        let pre = self.link(name, &component)?;
        let policy = Arc::new(LoadedPolicy::new(self.clone(), name, hash, config, backends, pre, self.state_of(name)));
        policy.probe_and_warm()?;
        Ok(policy)
    }

    /// Compiles and links `bytes` without running them, and lists what the
    /// component imports and exports.
    pub fn inspect(&self, name: &str, bytes: &[u8]) -> Result<ComponentReport, PolicyError> {
        let hash = content_hash(bytes);
        let component = self.compile(name, bytes, &hash)?;
        let ty = component.component_type();
        let engine = &self.inner.engine;
        let imports = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
        let exports = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        let world = match self.link(name, &component)? {
            Pre::Current(_) => WORLD,
            Pre::V0_1(_) => WORLD_0_1,
        };
        Ok(ComponentReport { hash, size: bytes.len(), imports, exports, world })
    }

    fn compile(&self, name: &str, bytes: &[u8], hash: &str) -> Result<Component, PolicyError> {
        check_component_header(name, bytes)?;
        let engine = &self.inner.engine;
        let compile_err = |e: wasmtime::Error| PolicyError::new(PolicyErrorKind::Compile, name, format!("{e:#}"));
        let Some(dir) = &self.inner.settings.cache_dir else {
            return Component::new(engine, bytes).map_err(compile_err);
        };
        let path = dir.join(format!("{hash}-{:016x}.cwasm", self.inner.engine_key));
        if path.exists() {
            match artifact_cache::load(engine, &path) {
                Ok(component) => return Ok(component),
                Err(e) => tracing::warn!(policy = name, path = %path.display(), "cached artifact unusable, compiling again: {e:#}"),
            }
        }
        let artifact = engine.precompile_component(bytes).map_err(compile_err)?;
        if let Err(e) = artifact_cache::store(dir, &path, &artifact) {
            tracing::warn!(policy = name, path = %path.display(), "cannot cache compiled policy: {e}");
        }
        match artifact_cache::prune(dir, &path, self.inner.settings.cache_max_bytes) {
            Ok(0) => {}
            Ok(n) => tracing::info!(dir = %dir.display(), "artifact cache over its size limit: {n} least recently used removed"),
            Err(e) => tracing::warn!(dir = %dir.display(), "cannot prune the artifact cache: {e}"),
        }
        artifact_cache::from_bytes(engine, &artifact).map_err(compile_err)
    }

    /// Links `component` against the current world, else the 0.1 one.
    fn link(&self, name: &str, component: &Component) -> Result<Pre, PolicyError> {
        let wrong_world = |e: wasmtime::Error| {
            PolicyError::new(
                PolicyErrorKind::WrongWorld,
                name,
                format!("the component does not fit the `{WORLD}` world (nor the earlier `{WORLD_0_1}`): {e:#}"),
            )
        };
        let pre = self.inner.linker.instantiate_pre(component).map_err(wrong_world)?;
        match PolicyBindingsPre::new(pre.clone()) {
            Ok(current) => Ok(Pre::Current(current)),
            Err(current_error) => v0_1::PolicyPre::new(pre).map(Pre::V0_1).map_err(|_| wrong_world(current_error)),
        }
    }

    /// The state of the policy `name` (a route's instance `NAME~MODEL`
    /// shares its policy's).
    fn state_of(&self, name: &str) -> Arc<PolicyState> {
        let base = name.split(super::INSTANCE_SEPARATOR).next().unwrap_or(name);
        let mut states = self.inner.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        states.entry(base.to_owned()).or_default().clone()
    }
}

/// Hex of the first 8 bytes of the file's BLAKE3 hash: the version id.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes);
    hash.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Gives a clear message for the common wrong files before wasmtime's more
/// cryptic parse errors.
fn check_component_header(name: &str, bytes: &[u8]) -> Result<(), PolicyError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(PolicyError::new(PolicyErrorKind::Compile, name, "not a WebAssembly file (no `\\0asm` header)"));
    }
    // Bytes 4..8: version 1 and layer 0 for a core module, layer 1 for a component.
    if bytes[6..8] == [0, 0] {
        return Err(PolicyError::new(
            PolicyErrorKind::Compile,
            name,
            "a core WebAssembly module, not a component: build for `wasm32-wasip2` or wrap it with `wasm-tools component new`",
        ));
    }
    Ok(())
}

/// Linear memories the instance pool holds at once, over every policy
/// version, warm instance and call.
const POOL_MEMORIES: u32 = 1000;

/// Address space reserved for each linear memory (guard pages come on
/// top): all of a 32-bit memory's, so guest code needs no bounds checks.
const MEMORY_RESERVATION: u64 = 4 << 30;

fn pooling_config(settings: &RuntimeSettings) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(1000)
        .total_core_instances(4000)
        .total_memories(POOL_MEMORIES)
        .total_tables(4000)
        // Python and JavaScript components carry large tables and contexts.
        .table_elements(1 << 20)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .max_memory_size(settings.memory_limit)
        // Keeping a little memory resident between instances halves the cost
        // of a fresh instance.
        .linear_memory_keep_resident(4 << 20)
        // A guest call's fiber stack: one per call under way.
        .total_stacks(POOL_MEMORIES)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while guest code may
/// run (the unit of every wall-clock backstop), and sleeps once none has run
/// for [`IDLE_TICKS_BEFORE_SLEEP`] ticks. A guest call holds a [`GuestRunning`]
/// for its whole length, which wakes the ticker if it sleeps: a deadline
/// counts from the epoch when the call began, so it is not shortened.
pub(crate) struct EpochTicker {
    /// Ticks so far: the engine's epoch (advanced just before it), which
    /// wasmtime does not expose.
    epoch: std::sync::atomic::AtomicU64,
    /// Guest calls under way.
    running: AtomicUsize,
    sleeping: AtomicBool,
    stopped: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

/// Guest code may be running: the ticker ticks until this drops.
pub(crate) struct GuestRunning(Arc<EpochTicker>);

impl Drop for GuestRunning {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<Arc<Self>> {
        let ticker = Arc::new(Self {
            epoch: std::sync::atomic::AtomicU64::new(0),
            running: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let this = ticker.clone();
        let handle = std::thread::Builder::new().name("policy-epoch".into()).spawn(move || this.run(&engine))?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    fn run(&self, engine: &Engine) {
        let mut idle = 0;
        while !self.stopped.load(Ordering::Relaxed) {
            idle = if self.running.load(Ordering::SeqCst) == 0 { idle + 1 } else { 0 };
            if idle >= IDLE_TICKS_BEFORE_SLEEP {
                // Said before looking, so that a call starting now either
                // is seen here or sees `sleeping` and wakes the thread.
                self.sleeping.store(true, Ordering::SeqCst);
                if self.running.load(Ordering::SeqCst) == 0 && !self.stopped.load(Ordering::SeqCst) {
                    std::thread::park();
                }
                self.sleeping.store(false, Ordering::SeqCst);
                idle = 0;
            }
            std::thread::sleep(EPOCH_TICK);
            self.epoch.fetch_add(1, Ordering::SeqCst);
            engine.increment_epoch();
        }
    }

    /// Marks guest code as running until the guard drops; wakes the ticker
    /// if it sleeps.
    pub(crate) fn guest_running(self: &Arc<Self>) -> GuestRunning {
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake();
        }
        GuestRunning(self.clone())
    }

    /// The current epoch, for absolute deadlines.
    pub(crate) fn now(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether the ticker sleeps now (for tests).
    #[cfg(test)]
    pub(crate) fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// Epoch ticks for a deadline: rounded up, plus one because the current tick
/// may end at any moment.
pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (deadline.as_nanos().div_ceil(tick) as u64).max(1) + 1
}

/// Compiled artifacts on disk, keyed by content hash and engine settings.
mod artifact_cache {
    use super::*;

    pub(super) fn store(dir: &Path, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        // Write-then-rename, so a reader never sees half an artifact; a name
        // of its own per process and call, as two threads may store one.
        static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        std::fs::write(&tmp, artifact)?;
        std::fs::rename(&tmp, path)
    }

    /// Loads an artifact that `store` wrote. The file is read into memory
    /// rather than mapped: a mapped file that someone truncates while in use
    /// kills the process with SIGBUS.
    pub(super) fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
        let artifact = std::fs::read(path)?;
        // Its modification time is its last use, for `prune`.
        let _ = std::fs::File::options().append(true).open(path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        from_bytes(engine, &artifact)
    }

    /// Removes the least recently used artifacts (never `keep`) until the
    /// directory holds at most `max_bytes`, and temporary files an
    /// interrupted `store` left over an hour ago. Returns how many
    /// artifacts it removed.
    pub(super) fn prune(dir: &Path, keep: &Path, max_bytes: u64) -> std::io::Result<usize> {
        let now = std::time::SystemTime::now();
        let mut artifacts = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let (path, meta) = (entry.path(), entry.metadata()?);
            let modified = meta.modified()?;
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if ext == "cwasm" {
                artifacts.push((modified, meta.len(), path));
            } else if ext.starts_with("tmp") && now.duration_since(modified).is_ok_and(|age| age > Duration::from_secs(3600)) {
                let _ = std::fs::remove_file(&path);
            }
        }
        let mut total: u64 = artifacts.iter().map(|(_, len, _)| len).sum();
        artifacts.sort();
        let mut removed = 0;
        for (_, len, path) in artifacts {
            if total <= max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Turns the output of `Engine::precompile_component` into a component.
    #[allow(unsafe_code)]
    pub(super) fn from_bytes(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: wasmtime requires that the bytes come from a trusted
        // `precompile_component`. They are either fresh from this engine, or
        // read from our own cache directory, written there by `store` under a
        // name keyed by this engine's compatibility hash; wasmtime checks the
        // header and engine settings again before use.
        unsafe { Component::deserialize(engine, artifact) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    #[test]
    fn the_ticker_sleeps_when_no_guest_runs_and_wakes_for_one() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let ticker = super::EpochTicker::start(wasmtime::Engine::new(&config).unwrap()).unwrap();
        // Generous bounds: on a busy machine a 1 ms tick's sleep takes several.
        let until = |asleep: bool, within: Duration| {
            let started = Instant::now();
            while ticker.is_sleeping() != asleep {
                assert!(started.elapsed() < within, "the ticker is not {}", if asleep { "asleep" } else { "awake" });
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        until(true, Duration::from_secs(30));
        let running = ticker.guest_running();
        until(false, Duration::from_secs(1));
        // A guest running for longer than the idle period keeps it awake.
        std::thread::sleep(super::EPOCH_TICK * (super::IDLE_TICKS_BEFORE_SLEEP + 200));
        assert!(!ticker.is_sleeping());
        drop(running);
        until(true, Duration::from_secs(30));
        ticker.stop();
    }

    use super::artifact_cache::prune;

    #[test]
    fn the_cache_drops_its_least_recently_used_artifacts_past_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, age_s: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().append(true).open(&path).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age_s)).unwrap();
            path
        };
        let oldest = file("a.cwasm", 500);
        let old = file("b.cwasm", 400);
        let kept_although_oldest = file("c.cwasm", 900);
        let recent = file("d.cwasm", 10);
        let stale_tmp = file("e.tmp123", 7200);
        let fresh_tmp = file("f.tmp456", 10);

        assert_eq!(prune(dir.path(), &kept_although_oldest, 250).unwrap(), 2);
        for (path, exists) in
            [(&oldest, false), (&old, false), (&kept_although_oldest, true), (&recent, true), (&stale_tmp, false), (&fresh_tmp, true)]
        {
            assert_eq!(path.exists(), exists, "{}", path.display());
        }
        assert_eq!(prune(dir.path(), &recent, 250).unwrap(), 0, "under the limit: nothing to do");
    }
}
