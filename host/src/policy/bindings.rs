//! The `policy` worlds' bindings: what the runtime instantiates and calls.
//! The current world's (0.2) data types are the router's
//! [`crate::contract`] types; the 0.1 world keeps its own, converted in
//! `compat.rs`. Everything generated here stays inside the policy runtime.
//! Exports are called async: guest code runs on a fiber that can yield
//! (see `version.rs`); the host imports are plain functions.

#[allow(missing_docs)]
mod current {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
        with: { "switchyard:policy/types": crate::contract::wit_types },
        exports: { default: async },
    });
}

#[allow(missing_docs)]
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit/v0.1",
        exports: { default: async },
    });

    pub(crate) use self::switchyard::policy::host::{Host as HostImports, LogLevel};
    pub(crate) use self::switchyard::policy::types;
}

pub(crate) use current::switchyard::policy::host::{Host as HostImports, LogLevel};
pub(crate) use current::{Policy as PolicyBindings, PolicyPre as PolicyBindingsPre};
