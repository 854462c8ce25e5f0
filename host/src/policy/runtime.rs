//! The policy runtime: one wasmtime engine, linker and epoch ticker per
//! process, and the steps that turn a policy file into a loaded version.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::contract::{Backend, PolicyBindings, PolicyBindingsPre, WORLD};
use super::error::{PolicyError, PolicyErrorKind};
use super::instance_state::InstanceState;
use super::settings::RuntimeSettings;
use super::version::LoadedPolicy;

/// How often the epoch advances; the unit of every deadline.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The process-wide policy runtime. Cheap to clone.
#[derive(Clone)]
pub struct PolicyRuntime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<InstanceState>,
    pub(crate) settings: RuntimeSettings,
    /// Key of compiled artifacts for this engine's settings.
    engine_key: u64,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
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
}

impl PolicyRuntime {
    /// Builds the engine, the linker and the epoch ticker.
    pub fn new(settings: RuntimeSettings) -> Result<Self, PolicyError> {
        let runtime_err = |e: wasmtime::Error| PolicyError::new(PolicyErrorKind::Runtime, "-", format!("{e:#}"));
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(&settings)));
        let engine = Engine::new(&config).map_err(runtime_err)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(runtime_err)?;
        PolicyBindings::add_to_linker::<InstanceState, HasSelf<InstanceState>>(&mut linker, |s| s).map_err(runtime_err)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hasher.finish();

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone())
            .map_err(|e| PolicyError::new(PolicyErrorKind::Runtime, "-", e.to_string()))?;

        Ok(Self { inner: Arc::new(RuntimeInner { engine, linker, settings, engine_key, ticker_stop }) })
    }

    /// The settings this runtime was built with.
    pub fn settings(&self) -> &RuntimeSettings {
        &self.inner.settings
    }

    /// Compiles `bytes` (or loads them from the artifact cache), checks that
    /// they target our world, runs `init` with `config` and `backends`, and
    /// makes one probe decision under the limits. Only a policy that passes
    /// every step is returned.
    pub fn load(&self, name: &str, bytes: &[u8], config: &str, backends: &[Backend]) -> Result<Arc<LoadedPolicy>, PolicyError> {
        let hash = content_hash(bytes);
        let component = self.compile(name, bytes, &hash)?;
        let pre = self.link(name, &component)?;
        let policy = Arc::new(LoadedPolicy::new(self.clone(), name, hash, config, backends, pre));
        policy.probe()?;
        Ok(policy)
    }

    /// Compiles and links `bytes` without running them, and lists what the
    /// component imports and exports.
    pub fn inspect(&self, name: &str, bytes: &[u8]) -> Result<ComponentReport, PolicyError> {
        let hash = content_hash(bytes);
        let component = self.compile(name, bytes, &hash)?;
        let ty = component.component_type();
        let engine = &self.inner.engine;
        let report = ComponentReport {
            hash,
            size: bytes.len(),
            imports: ty.imports(engine).map(|(n, _)| n.to_owned()).collect(),
            exports: ty.exports(engine).map(|(n, _)| n.to_owned()).collect(),
        };
        self.link(name, &component)?;
        Ok(report)
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
        artifact_cache::from_bytes(engine, &artifact).map_err(compile_err)
    }

    fn link(&self, name: &str, component: &Component) -> Result<PolicyBindingsPre<InstanceState>, PolicyError> {
        let wrong_world = |e: wasmtime::Error| {
            PolicyError::new(PolicyErrorKind::WrongWorld, name, format!("the component does not fit the `{WORLD}` world: {e:#}"))
        };
        let pre = self.inner.linker.instantiate_pre(component).map_err(wrong_world)?;
        PolicyBindingsPre::new(pre).map_err(wrong_world)
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

fn pooling_config(settings: &RuntimeSettings) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(1000)
        .total_core_instances(4000)
        .total_memories(1000)
        .total_tables(4000)
        // Python and JavaScript components carry large tables and contexts.
        .table_elements(1 << 20)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .max_memory_size(settings.memory_limit)
        // Keeping a little memory resident between instances halves the cost
        // of a fresh instance.
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("policy-epoch".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
        }
    })?;
    Ok(())
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
        // Write-then-rename, so a reader never sees half an artifact.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, artifact)?;
        std::fs::rename(&tmp, path)
    }

    /// Loads an artifact that `store` wrote. The file is read into memory
    /// rather than mapped: a mapped file that someone truncates while in use
    /// kills the process with SIGBUS.
    pub(super) fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
        let artifact = std::fs::read(path)?;
        from_bytes(engine, &artifact)
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
