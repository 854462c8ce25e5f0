//! Limits and knobs of the policy runtime.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::config::{DecideOn, DEFAULT_CALL_DEADLINE_MS, DEFAULT_CALL_FUEL, DEFAULT_INIT_FUEL};

/// How instances of a policy version are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceMode {
    /// Keep a small pool of warm instances per version and reuse them; an
    /// instance is discarded after any trap and recycled after
    /// [`RuntimeSettings::recycle_after`] calls. Fast: a warm call skips
    /// instantiation.
    Pooled,
    /// A fresh instance for every decision: no state can leak from one request
    /// to the next, at the price of instantiation and `init` per call.
    Fresh,
}

/// Settings of the policy runtime. [`Default`] gives production values.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// The budget of one `route` call, in fuel: about one unit per
    /// WebAssembly instruction the guest executes. The same request on the
    /// same version always costs the same, whatever the machine's load, so
    /// a decision either always fits or never does.
    pub call_fuel: u64,
    /// The budget of instantiation plus `init`, in fuel.
    pub init_fuel: u64,
    /// Wall-clock backstop of one `route` call, for what fuel does not
    /// meter (host-side stalls). Far above what the fuel budget takes, so
    /// only a sick host or guest hits it; granularity is one millisecond.
    pub call_deadline: Duration,
    /// Wall-clock backstop of instantiation plus `init`.
    pub init_deadline: Duration,
    /// Where [`LoadedPolicy::decide_async`](super::LoadedPolicy::decide_async) runs guest code.
    pub decide_on: DecideOn,
    /// Decisions that run at once: on the workers, calls that hold an
    /// instance (a call longer than a tick yields and still holds it); with
    /// [`DecideOn::Threads`], the policy threads.
    pub threads: usize,
    /// Decisions that may wait for their turn; past that a decision fails
    /// at once as overloaded.
    pub queue: usize,
    /// Cap on one instance's linear memory, in bytes.
    pub memory_limit: usize,
    /// How instances are reused.
    pub instance_mode: InstanceMode,
    /// Warm instances kept per policy version in [`InstanceMode::Pooled`],
    /// all created when the version loads, so requests never wait for an
    /// instance (Python and JavaScript take about a millisecond each).
    pub warm_instances: usize,
    /// Calls after which a warm instance is dropped and replaced, bounding
    /// whatever state or leaks a guest accumulates.
    pub recycle_after: u64,
    /// Consecutive deadline hits after which a version is quarantined.
    pub quarantine_after: u32,
    /// How long a quarantined version refuses calls before it is tried again.
    pub quarantine_for: Duration,
    /// Most targets a decision may name.
    pub max_targets: usize,
    /// Most labels a decision may carry.
    pub max_labels: usize,
    /// Longest label key or value, in bytes.
    pub max_label_bytes: usize,
    /// Longest rejection message, in bytes.
    pub max_reject_message_bytes: usize,
    /// Log lines a policy version may write per second (host `log` import and
    /// guest stdout/stderr together); the rest are dropped and counted.
    pub log_lines_per_second: u32,
    /// Longest log line kept, in bytes; longer lines are cut.
    pub log_line_max_bytes: usize,
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The most the cache may hold, in bytes; the least recently used
    /// artifacts go first.
    pub cache_max_bytes: u64,
    /// The most compiled functions kept in memory for the next compile
    /// (Cranelift's incremental cache), in bytes; 0 disables it.
    pub function_cache_bytes: u64,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            call_fuel: DEFAULT_CALL_FUEL,
            init_fuel: DEFAULT_INIT_FUEL,
            call_deadline: Duration::from_millis(DEFAULT_CALL_DEADLINE_MS),
            init_deadline: Duration::from_secs(10),
            decide_on: DecideOn::Worker,
            threads: default_threads(),
            queue: 1024,
            memory_limit: 64 << 20,
            instance_mode: InstanceMode::Pooled,
            warm_instances: default_threads(),
            recycle_after: 100_000,
            quarantine_after: 3,
            quarantine_for: Duration::from_secs(10),
            max_targets: 16,
            max_labels: 16,
            max_label_bytes: 256,
            max_reject_message_bytes: 1024,
            log_lines_per_second: 50,
            log_line_max_bytes: 1024,
            cache_dir: default_cache_dir(),
            cache_max_bytes: 1 << 30,
            function_cache_bytes: super::function_cache::DEFAULT_FUNCTION_CACHE_BYTES,
        }
    }
}

/// One per core: decisions at once, or policy threads.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `$XDG_CACHE_HOME/switchyard`, else `$HOME/.cache/switchyard`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("switchyard").join("policies"))
}
