//! The `policy` world's bindings: what the runtime instantiates and calls.
//! The world's data types are the router's [`crate::contract`] types;
//! everything generated here stays inside the policy runtime.

#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
        with: { "switchyard:policy/types": crate::contract::wit_types },
    });
}

pub(crate) use generated::switchyard::policy::host::{Host as HostImports, LogLevel};
pub(crate) use generated::{Policy as PolicyBindings, PolicyPre as PolicyBindingsPre};
