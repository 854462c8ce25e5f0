//! Switchyard: an LLM router whose routing policies are WebAssembly components.
//!
//! The crate is both the `switchyard` binary and a library, so that tests and
//! benchmarks drive the same code. See `ARCHITECTURE.md` for the code map.
//!
//! - [`policy`]: the policy runtime (wasmtime), the registry of loaded
//!   policies and their hot reload. wasmtime types never leave it.

#![warn(missing_docs)]

pub mod admin;
pub mod anthropic;
pub mod cache;
pub mod config;
pub mod contract;
mod debounce;
pub mod decision_log;
pub mod error;
pub mod gateway;
pub mod memory;
pub mod metrics;
pub mod mock_answers;
pub mod mock_upstream;
pub mod native;
pub mod open_files;
pub mod openai;
pub mod origin;
pub mod policy;
pub mod quota;
pub mod reload;
pub mod replay;
pub mod responses;
pub mod server;
pub mod shared_store;
pub mod stats;
pub mod telemetry;
pub mod text;
pub mod upstream;
