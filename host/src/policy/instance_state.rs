//! What the host keeps per wasmtime `Store`: a locked-down WASI context, the
//! memory cap, and the policy's log sink.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{HostImports, LogLevel};
use super::guest_log::{GuestLog, GuestOutput, StderrTail};
use crate::contract::wit_types::Host as TypesImports;

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
}

impl InstanceState {
    /// `random` is the byte cycle the guest's WASI random draws from.
    pub(crate) fn new(log: Arc<GuestLog>, memory_limit: usize, random: &[u8]) -> Self {
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
        Self { wasi, table: ResourceTable::new(), log, memory_limit, memory_limit_hit: false, stderr_tail }
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
}

impl TypesImports for InstanceState {}

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
