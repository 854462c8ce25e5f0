//! The OpenAI-compatible API as the router speaks it: reading client
//! requests, and Server-Sent Events.

pub mod inbound;
pub mod sse;
