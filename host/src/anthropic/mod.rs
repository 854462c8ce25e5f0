//! The Anthropic Messages API as the router serves it (`POST /v1/messages`
//! and `/v1/messages/count_tokens`), for clients such as Claude Code and the
//! `anthropic` SDKs.
//!
//! A request is read twice: as it was sent (kept byte for byte, so that an
//! Anthropic backend gets it unchanged but for `model`), and translated to
//! the OpenAI chat shape the rest of the router speaks (the policy's view,
//! OpenAI-compatible backends, rescue). Answers in the OpenAI shape are
//! translated back on the way out.
//!
//! - `inbound.rs`: the request, both ways.
//! - `answer.rs`: complete answers and errors.
//! - `stream.rs`: OpenAI chunks as Anthropic stream events.

pub mod answer;
pub mod inbound;
pub mod stream;

/// The tag a policy sees on requests that came in on the Messages API
/// (contract 0.1 has no surface for it: they are `chat` there).
pub const API_TAG: &str = "switchyard.api";

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        408 | 504 => "timeout_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}
