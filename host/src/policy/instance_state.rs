//! What the host keeps per wasmtime `Store`: a locked-down WASI context, the
//! memory cap, the policy's log sink, the stats snapshot of the current
//! call and the policy's state: what the `host` imports serve.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{v0_1, HostImports, LogLevel};
use super::guest_log::{GuestLog, GuestOutput, StderrTail};
use super::state::PolicyState;
use crate::contract::wit_types::Host as TypesImports;
use crate::contract::{BackendStats, CircuitState};

/// Most table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

pub(crate) struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    log: Arc<GuestLog>,
    memory_limit: usize,
    /// Set when the guest asked for more memory than the cap, so that the
    /// trap that usually follows is reported as a memory-limit error.
    pub(crate) memory_limit_hit: bool,
    /// What the guest last wrote to stderr in the current call.
    pub(crate) stderr_tail: Arc<StderrTail>,
    /// The backends' stats for the current `route` call (idle in `init`).
    pub(crate) stats: Vec<BackendStats>,
    /// The policy's state, shared by its instances.
    state: Arc<PolicyState>,
    /// The epoch at which the current call's backstop ends it, and the ticks
    /// its guest code has seen run (see `on_epoch_tick` in `version.rs`).
    pub(crate) backstop_at: u64,
    pub(crate) ticks_run: u64,
}

impl InstanceState {
    /// `random` is the byte cycle the guest's WASI random draws from;
    /// `stats`, the backends' stats until a call sets them.
    pub(crate) fn new(log: Arc<GuestLog>, memory_limit: usize, random: &[u8], stats: Vec<BackendStats>, state: Arc<PolicyState>) -> Self {
        // No preopened directories, environment, arguments or sockets: the
        // builder's defaults grant nothing, and the network is closed
        // explicitly. Clocks and random stay, as guest runtimes need them;
        // random is the same for every instance of a version, so that the
        // same request costs the same fuel and decides the same on a fresh
        // instance (hash seeds, for one, come from it).
        let stderr_tail = Arc::new(StderrTail::default());
        let seed = random.iter().take(16).fold(0u128, |seed, b| seed << 8 | u128::from(*b));
        let wasi = WasiCtxBuilder::new()
            .secure_random(Deterministic::new(random.to_vec()))
            .insecure_random(Deterministic::new(random.to_vec()))
            .insecure_random_seed(seed)
            .stdout(GuestOutput::new(log.clone(), LogLevel::Info))
            .stderr(GuestOutput::new(log.clone(), LogLevel::Warn).with_tail(stderr_tail.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            log,
            memory_limit,
            memory_limit_hit: false,
            stderr_tail,
            stats,
            state,
            backstop_at: 0,
            ticks_run: 0,
        }
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl HostImports for InstanceState {
    fn log(&mut self, level: LogLevel, message: String) {
        self.log.emit(level, &message);
    }

    fn circuits(&mut self) -> Vec<CircuitState> {
        self.stats.iter().map(|s| s.circuit).collect()
    }

    fn stats(&mut self, index: u32) -> Option<BackendStats> {
        self.stats.get(index as usize).cloned()
    }

    fn all_stats(&mut self) -> Vec<BackendStats> {
        self.stats.clone()
    }

    fn state_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.state.get(&key)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u32>) -> Result<(), String> {
        self.state.set(&key, value, ttl_ms.map(|ms| std::time::Duration::from_millis(u64::from(ms))))
    }

    fn state_add(&mut self, key: String, delta: i64) -> Result<i64, String> {
        self.state.add(&key, delta)
    }
}

impl TypesImports for InstanceState {}

impl v0_1::HostImports for InstanceState {
    fn log(&mut self, level: v0_1::LogLevel, message: String) {
        let level = match level {
            v0_1::LogLevel::Trace => LogLevel::Trace,
            v0_1::LogLevel::Debug => LogLevel::Debug,
            v0_1::LogLevel::Info => LogLevel::Info,
            v0_1::LogLevel::Warn => LogLevel::Warn,
            v0_1::LogLevel::Error => LogLevel::Error,
        };
        self.log.emit(level, &message);
    }
}

impl v0_1::types::Host for InstanceState {}

impl ResourceLimiter for InstanceState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
