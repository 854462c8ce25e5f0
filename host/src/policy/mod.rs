//! The policy runtime: routing policies as sandboxed WebAssembly components.
//!
//! - [`PolicyRuntime`]: the wasmtime engine; compiles, links and loads.
//! - [`LoadedPolicy`]: one version of a policy; [`LoadedPolicy::decide`] is
//!   the per-request call.
//! - [`PolicyRegistry`] and [`watch`]: policies by name from a directory,
//!   hot-reloaded.
//!
//! wasmtime types do not leave this module.

mod bindings;
mod compat;
mod decision;
mod error;
mod function_cache;
mod guest_log;
mod instance_state;
mod registry;
mod runtime;
mod settings;
pub mod signing;
pub mod state;
mod threads;
mod turns;
mod version;
mod watch;

pub use decision::{ChosenTarget, Decision, RoutePlan};
pub use error::{PolicyError, PolicyErrorKind};
pub use function_cache::FunctionCacheStats;
pub use registry::{
    Candidate, PolicyRegistry, PolicySources, PolicyStatus, RescanReport, EMPTY_CONFIG, INSTANCE_SEPARATOR, KEPT_VERSIONS, POLICY_EXTENSION,
};
pub use runtime::{ComponentReport, PolicyRuntime};
pub use settings::{
    default_cache_dir, default_threads, DecideOn, InstanceMode, RuntimeSettings, DEFAULT_CALL_DEADLINE_MS, DEFAULT_CALL_FUEL,
};
pub use version::{LoadedPolicy, PolicyCallStats};
pub use watch::{watch, PolicyWatcher, DEFAULT_DEBOUNCE, DEFAULT_POLL};
