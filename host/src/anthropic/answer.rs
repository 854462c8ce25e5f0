//! Complete answers and errors in the Messages API's shapes.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::error::GatewayError;

/// An OpenAI chat completion as a Messages API message.
pub fn message_from_completion(completion: &Value) -> Result<Value, String> {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    // Reasoning is left out: a `thinking` block needs Anthropic's signature
    // (see `stream.rs`).
    let mut content = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": refusal}));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(if arguments.trim().is_empty() { "{}" } else { arguments })
            .map_err(|_| format!("the upstream's tool call `{}` has arguments that are not JSON", call["function"]["name"]))?;
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
    }
    let called = content.iter().any(|b| b["type"] == "tool_use");
    let stop_reason =
        choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(|f| if called && f != "length" { "tool_use" } else { super::stop_reason(f) });
    let id = completion["id"].as_str().unwrap_or_default();
    Ok(json!({
        "id": if id.starts_with("msg_") { id.to_owned() } else { format!("msg_{id}") },
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage(&completion["usage"]),
    }))
}

/// An OpenAI `usage` object as the Messages API's: cached prompt tokens
/// apart from the others.
pub fn usage(usage: &Value) -> Value {
    let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0);
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0).min(prompt);
    json!({
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": usage["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// `(prompt_tokens, completion_tokens)` of a Messages API `usage` object,
/// cached and cache-writing input included in the prompt.
pub fn usage_counts(usage: &Value) -> Option<(u64, u64)> {
    let input = usage.get("input_tokens")?.as_u64()?;
    let cached: u64 =
        ["cache_read_input_tokens", "cache_creation_input_tokens"].iter().filter_map(|k| usage.get(*k).and_then(Value::as_u64)).sum();
    Some((input + cached, usage.get("output_tokens").and_then(Value::as_u64).unwrap_or(0)))
}

/// The Messages API's error object for a router error.
pub fn error_json(error: &GatewayError) -> Value {
    json!({"type": "error", "error": {"type": super::error_type(error.status.as_u16()), "message": error.message}})
}

/// An upstream's error body in the Messages API's shape: as it is when it
/// has that shape (an Anthropic backend's), else translated from OpenAI's.
pub fn upstream_error(status: u16, body: &[u8]) -> Bytes {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if value["type"] == "error" && value["error"].is_object() {
        return Bytes::copy_from_slice(body);
    }
    let message = value["error"]["message"].as_str().unwrap_or("the upstream failed");
    Bytes::from(json!({"type": "error", "error": {"type": super::error_type(status), "message": message}}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_become_messages() {
        let c = json!({"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}});
        let m = message_from_completion(&c).unwrap();
        assert_eq!(m["id"], "msg_chatcmpl-1");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["content"][0], json!({"type": "text", "text": "Let me look."}));
        assert_eq!(m["content"][1], json!({"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": 1}}));
        assert_eq!(m["usage"]["input_tokens"], 6);
        assert_eq!(m["usage"]["cache_read_input_tokens"], 4);
        assert_eq!(usage_counts(&m["usage"]), Some((10, 5)));
        let broken = json!({"choices": [{"message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{nope"}}]}}]});
        assert!(message_from_completion(&broken).is_err());
        let length = json!({"choices": [{"finish_reason": "length", "message": {"content": "cut"}}], "usage": {}});
        assert_eq!(message_from_completion(&length).unwrap()["stop_reason"], "max_tokens");
    }

    #[test]
    fn upstream_errors_take_the_messages_shape() {
        let native = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(&upstream_error(529, native)[..], native);
        let openai: Value =
            serde_json::from_slice(&upstream_error(429, br#"{"error":{"message":"slow down","type":"rate_limit"}}"#)).unwrap();
        assert_eq!(openai, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}));
    }
}
