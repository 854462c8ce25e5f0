//! Write Switchyard routing policies in Rust.
//!
//! A policy is a type that implements [`Policy`], exported with
//! [`export_policy!`], built for `wasm32-wasip2`:
//!
//! ```no_run
//! use switchyard_policy::prelude::*;
//!
//! struct FirstHealthy;
//!
//! impl Policy for FirstHealthy {
//!     fn init(_config: &str, _backends: &[Backend]) -> Result<Self, String> {
//!         Ok(FirstHealthy)
//!     }
//!
//!     fn route(&self, _request: &Request, backends: &[Backend]) -> Decision {
//!         match backends.iter().find(|b| b.is_healthy()) {
//!             Some(b) => route([b]).label("reason", "first-healthy").into(),
//!             None => reject(503, "no healthy backend"),
//!         }
//!     }
//! }
//!
//! switchyard_policy::export_policy!(FirstHealthy);
//! ```
//!
//! The types mirror `wit/policy.wit` (contract `switchyard:policy@0.2.0`),
//! whose comments document every field. One difference: the contract passes
//! a backend's configuration to `init` and serves its live stats from the
//! `host` interface; this crate joins the two before each `route`, so a
//! policy sees each [`Backend`] whole, `stats` included.
//!
//! A policy that learns from what its decisions came to sets
//! [`Policy::OBSERVES`] and implements [`Policy::observe`], and keeps what
//! it learns in [`state`] (instances come and go; state stays).

extern crate self as switchyard_policy;

mod decision;
mod select;

/// The bindings generated from `wit/policy.wit`. Policies use the re-exports
/// at the crate root instead.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_policy_world",
        default_bindings_module: "::switchyard_policy::bindings",
        runtime_path: "::switchyard_policy::__private::wit_bindgen::rt",
    });
}

pub use bindings::switchyard::policy::host::LogLevel;
pub use bindings::switchyard::policy::types::{
    ApiSurface, BackendStats, Caller, Capabilities, CircuitState, Decision, FailedAttempt, Features, Message, Outcome, Rejection, Request,
    Role, Route, Tag, Target,
};

/// A configured backend with its live stats.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Unique name; targets refer to it.
    pub name: String,
    /// Provider kind: `openai`, `anthropic`, `mock`, ...
    pub provider: String,
    /// The upstream model it serves by default.
    pub model: String,
    /// Operator-given tags such as `private`, `eu`.
    pub tags: Vec<String>,
    /// US dollars per million input tokens.
    pub input_price: f64,
    /// US dollars per million output tokens.
    pub output_price: f64,
    /// Context window in tokens.
    pub context_window: u32,
    /// What it can do.
    pub capabilities: Capabilities,
    /// Live stats, fresh for every `route` call (idle during `init`).
    pub stats: BackendStats,
}

impl Backend {
    fn from_contract(b: bindings::switchyard::policy::types::Backend) -> Self {
        Backend {
            name: b.name,
            provider: b.provider,
            model: b.model,
            tags: b.tags,
            input_price: b.input_price,
            output_price: b.output_price,
            context_window: b.context_window,
            capabilities: b.capabilities,
            stats: BackendStats {
                circuit: CircuitState::Closed,
                in_flight: 0,
                latency_p50_ms: 0.0,
                latency_p95_ms: 0.0,
                ttft_ms: 0.0,
                error_rate: 0.0,
                samples: 0,
            },
        }
    }
}
pub use decision::{reject, route, RouteBuilder};
pub use select::{cheapest, fastest, hash_bucket, rank_by_cost, weighted_choice, BackendExt, RequestExt, SeedRng};

/// Everything a policy usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        cheapest, fastest, hash_bucket, log, rank_by_cost, reject, route, state, weighted_choice, ApiSurface, Backend, BackendExt,
        CircuitState, Decision, LogLevel, Message, Outcome, Policy, Request, RequestExt, Role, SeedRng, StatsNeeded,
    };
}

/// A routing policy.
///
/// The router creates instances of the policy as it needs them and calls
/// [`Policy::init`] once on each, then [`Policy::route`] per request. Keep
/// `route` a pure function of its arguments: take randomness from
/// `request.seed` (see [`SeedRng`]), so that decisions can be replayed.
pub trait Policy: Sized + 'static {
    /// Builds the policy from its configuration (a JSON document, `{}` when
    /// none is configured) and the configured backends (with idle stats). An
    /// error refuses the configuration; the router then keeps the previous
    /// version serving and reports the message.
    fn init(config: &str, backends: &[Backend]) -> Result<Self, String>;

    /// Decides where `request` goes. `backends` lists every configured
    /// backend with its live stats.
    fn route(&self, request: &Request, backends: &[Backend]) -> Decision;

    /// Whether the router should call [`Policy::observe`] with the outcome
    /// of every request this policy decided.
    const OBSERVES: bool = false;

    /// Which of the backends' live stats `route` reads. A policy that looks
    /// at nothing but circuits (`is_healthy`, `can_serve`, `rank_by_cost`)
    /// says [`StatsNeeded::Circuits`]: one byte a backend crosses into the
    /// guest instead of a record, which counts with many backends. The other
    /// stats then stay zero.
    const STATS: StatsNeeded = StatsNeeded::All;

    /// Takes the outcome of a request this policy decided (when
    /// [`Policy::OBSERVES`]): after its answer ended, off the request's
    /// path, on any instance. Keep what it teaches in [`state`].
    fn observe(&self, _outcome: &Outcome) {}
}

/// Which of the backends' live stats a policy reads ([`Policy::STATS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsNeeded {
    /// Every field of [`BackendStats`] (one `all-stats` call a decision).
    All,
    /// Only `circuit` (one `circuits` call: a byte a backend).
    Circuits,
}

/// Policy state: small values the router keeps for this policy, shared by
/// all its instances (and versions) on the node. Keys at most 256 bytes,
/// values at most 64 KiB, 10 000 keys and 16 MiB in all.
pub mod state {
    use crate::bindings::switchyard::policy::host;

    /// The value at `key`, if set and not expired.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::state_get(key)
    }

    /// Sets `key` to `value`, expiring after `ttl_ms` if given; fails over
    /// the bounds.
    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u32>) -> Result<(), String> {
        host::state_set(key, value, ttl_ms)
    }

    /// Adds `delta` to the counter at `key` (0 when unset) and answers the
    /// new value.
    pub fn add(key: &str, delta: i64) -> Result<i64, String> {
        host::state_add(key, delta)
    }
}

/// Writes a line to the router's log (rate-limited by the router).
pub fn log(level: LogLevel, message: &str) {
    bindings::switchyard::policy::host::log(level, message);
}

/// Exports a [`Policy`] implementation as the component's `init` and `route`.
/// Use it once, at the crate root of a `cdylib` built for `wasm32-wasip2`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = {
            struct __SwitchyardExport;
            impl $crate::__private::Guest for __SwitchyardExport {
                fn init(
                    config: ::std::string::String,
                    backends: ::std::vec::Vec<$crate::__private::ContractBackend>,
                ) -> ::std::result::Result<$crate::Features, ::std::string::String> {
                    $crate::__private::init::<$policy>(&config, backends)
                }
                fn route(request: $crate::Request) -> $crate::Decision {
                    $crate::__private::route::<$policy>(&request)
                }
                fn observe(outcome: $crate::Outcome) {
                    $crate::__private::observe::<$policy>(&outcome)
                }
            }
    $crate::bindings::__export_policy_world!(__SwitchyardExport with_types_in $crate::bindings);
        };
    };
}

/// Support for [`export_policy!`]; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    pub use crate::bindings::switchyard::policy::types::Backend as ContractBackend;
    pub use crate::bindings::Guest;
    pub use wit_bindgen;

    use crate::bindings::switchyard::policy::host;
    use crate::{reject, Backend, Decision, Features, Outcome, Policy, Request};

    struct Instance {
        policy: Box<dyn Any>,
        backends: Vec<Backend>,
    }

    thread_local! {
        // Wasm components are single-threaded: this is the instance's state.
        static INSTANCE: RefCell<Option<Instance>> = const { RefCell::new(None) };
    }

    pub fn init<P: Policy>(config: &str, backends: Vec<ContractBackend>) -> Result<Features, String> {
        let backends: Vec<Backend> = backends.into_iter().map(Backend::from_contract).collect();
        let policy = P::init(config, &backends)?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Instance { policy: Box::new(policy), backends }));
        Ok(if P::OBSERVES { Features::OBSERVE } else { Features::empty() })
    }

    pub fn observe<P: Policy>(outcome: &Outcome) {
        INSTANCE.with(|cell| {
            if let Some(policy) = cell.borrow().as_ref().and_then(|i| i.policy.downcast_ref::<P>()) {
                policy.observe(outcome);
            }
        })
    }

    pub fn route<P: Policy>(request: &Request) -> Decision {
        INSTANCE.with(|cell| {
            let mut cell = cell.borrow_mut();
            let Some(instance) = cell.as_mut() else { return reject(500, "policy called before init") };
            // One host call: every backend's stats (or circuits), joined to its configuration.
            match P::STATS {
                crate::StatsNeeded::All => {
                    let stats = host::all_stats();
                    if stats.len() != instance.backends.len() {
                        return reject(
                            500,
                            format!("router sent stats for {} backends, init had {}", stats.len(), instance.backends.len()),
                        );
                    }
                    for (backend, stats) in instance.backends.iter_mut().zip(stats) {
                        backend.stats = stats;
                    }
                }
                crate::StatsNeeded::Circuits => {
                    let circuits = host::circuits();
                    if circuits.len() != instance.backends.len() {
                        return reject(
                            500,
                            format!("router sent circuits for {} backends, init had {}", circuits.len(), instance.backends.len()),
                        );
                    }
                    for (backend, circuit) in instance.backends.iter_mut().zip(circuits) {
                        backend.stats.circuit = circuit;
                    }
                }
            }
            match instance.policy.downcast_ref::<P>() {
                Some(policy) => policy.route(request, &instance.backends),
                None => reject(500, "policy state of the wrong type"),
            }
        })
    }
}
