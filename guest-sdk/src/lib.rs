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
//!     fn init(_config: &str) -> Result<Self, String> {
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
//! The types mirror `wit/policy.wit`, whose comments document every field.

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
    ApiSurface, Backend, BackendStats, Capabilities, Caller, CircuitState, Decision, Message, Rejection, Request, Role,
    Route, Tag, Target,
};
pub use decision::{reject, route, RouteBuilder};
pub use select::{cheapest, fastest, hash_bucket, weighted_choice, BackendExt, RequestExt, SeedRng};

/// Everything a policy usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        cheapest, fastest, hash_bucket, log, reject, route, weighted_choice, ApiSurface, Backend, BackendExt, CircuitState,
        Decision, LogLevel, Message, Policy, Request, RequestExt, Role, SeedRng,
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
    /// none is configured). An error refuses the configuration; the router
    /// then keeps the previous version serving and reports the message.
    fn init(config: &str) -> Result<Self, String>;

    /// Decides where `request` goes. `backends` lists every configured
    /// backend with its live stats.
    fn route(&self, request: &Request, backends: &[Backend]) -> Decision;
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
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$policy>(&config)
                }
                fn route(request: $crate::Request, backends: ::std::vec::Vec<$crate::Backend>) -> $crate::Decision {
                    $crate::__private::route::<$policy>(&request, &backends)
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

    pub use crate::bindings::Guest;
    pub use wit_bindgen;

    use crate::{reject, Backend, Decision, Policy, Request};

    thread_local! {
        // Wasm components are single-threaded: this is the instance's state.
        static POLICY: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub fn init<P: Policy>(config: &str) -> Result<(), String> {
        let policy = P::init(config)?;
        POLICY.with(|cell| *cell.borrow_mut() = Some(Box::new(policy)));
        Ok(())
    }

    pub fn route<P: Policy>(request: &Request, backends: &[Backend]) -> Decision {
        POLICY.with(|cell| match cell.borrow().as_ref().and_then(|p| p.downcast_ref::<P>()) {
            Some(policy) => policy.route(request, backends),
            None => reject(500, "policy called before init"),
        })
    }
}
