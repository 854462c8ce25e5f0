//! The OpenAI-compatible API as the router speaks it: reading client
//! requests, and Server-Sent Events.

pub mod inbound;
pub mod sse;

/// `(prompt_tokens, completion_tokens)` of an answer or chunk that reports
/// its `usage`.
pub fn usage(answer: &serde_json::Value) -> Option<(u64, u64)> {
    usage_counts(answer.get("usage")?)
}

/// `(prompt_tokens, completion_tokens)` of a `usage` object.
pub fn usage_counts(usage: &serde_json::Value) -> Option<(u64, u64)> {
    Some((usage.get("prompt_tokens")?.as_u64()?, usage.get("completion_tokens").and_then(serde_json::Value::as_u64).unwrap_or(0)))
}
