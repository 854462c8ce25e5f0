//! OpenAI's Responses API as the router serves it (`POST /v1/responses`),
//! stateless: for agents and Codex-style clients.
//!
//! Like the Messages API (`anthropic/`), a request is read twice: as it was
//! sent (kept byte for byte for backends that serve the Responses API
//! themselves, `capabilities.responses`), and translated to the OpenAI chat
//! shape the rest of the router speaks. Answers in the chat shape are
//! translated back on the way out.
//!
//! - `inbound.rs`: the request, both ways.
//! - `answer.rs`: the `response` object.
//! - `stream.rs`: chat chunks as the API's semantic events.

pub mod answer;
pub mod inbound;
pub mod stream;
