//! Deterministic OpenAI-shaped answers, shared by the `mock` provider and the
//! `mock-upstream` test server. The shapes follow OpenAI's OpenAPI spec:
//! `logprobs` and `refusal` are `null`, `tool_calls` is left out.

use serde_json::{json, Map, Value};

use crate::contract::ApiSurface;

/// The tokens of a mock answer: a sentence about the prompt, repeated or cut
/// to `count` tokens. Same inputs, same tokens.
pub fn answer_tokens(model: &str, prompt: &str, count: u32) -> Vec<String> {
    let excerpt: String = prompt.split_whitespace().take(8).collect::<Vec<_>>().join(" ");
    let sentence = format!("This is a mock answer from {model} to: {excerpt}.");
    let words: Vec<&str> = sentence.split(' ').collect();
    (0..count as usize).map(|i| if i == 0 { words[0].to_owned() } else { format!(" {}", words[i % words.len()]) }).collect()
}

/// The text the mock answers to: the last user message, or the prompt or
/// input.
pub fn prompt_text(surface: ApiSurface, body: &Map<String, Value>) -> String {
    let text_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str).or(p.as_str())).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    };
    match surface {
        ApiSurface::Chat => body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")))
            .and_then(|m| m.get("content"))
            .map(text_of)
            .unwrap_or_default(),
        ApiSurface::Completion => body.get("prompt").map(text_of).unwrap_or_default(),
        ApiSurface::Embeddings => body.get("input").map(text_of).unwrap_or_default(),
    }
}

/// Rough token count of a text, as the mocks report usage.
pub fn count_tokens(text: &str) -> u32 {
    (text.len() as u32).div_ceil(4).max(1)
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A complete, non-streamed answer for `surface`.
pub fn complete(surface: ApiSurface, id: &str, model: &str, created: u64, body: &Map<String, Value>, tokens: &[String]) -> Value {
    let prompt = prompt_text(surface, body);
    let text: String = tokens.concat();
    let (p, c) = (count_tokens(&prompt), tokens.len() as u32);
    match surface {
        ApiSurface::Chat => json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": usage(p, c),
        }),
        ApiSurface::Completion => json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage(p, c),
        }),
        ApiSurface::Embeddings => embeddings(model, body),
    }
}

/// One streamed chunk: the first carries the role, the last the finish reason.
pub fn chunk(surface: ApiSurface, id: &str, model: &str, created: u64, token: Option<&str>, first: bool, finish: bool) -> Value {
    match surface {
        ApiSurface::Completion => json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": token.unwrap_or(""), "logprobs": null, "finish_reason": if finish { json!("stop") } else { Value::Null }}],
        }),
        _ => {
            let mut delta = Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = token {
                delta.insert("content".into(), json!(t));
            } else if first {
                delta.insert("content".into(), json!(""));
            }
            json!({
                "id": format!("chatcmpl-{id}"),
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": if finish { json!("stop") } else { Value::Null }}],
            })
        }
    }
}

/// The final usage chunk of a stream (`stream_options.include_usage`).
pub fn usage_chunk(surface: ApiSurface, id: &str, model: &str, created: u64, prompt_tokens: u32, completion_tokens: u32) -> Value {
    let (prefix, object) = match surface {
        ApiSurface::Completion => ("cmpl", "text_completion"),
        _ => ("chatcmpl", "chat.completion.chunk"),
    };
    json!({
        "id": format!("{prefix}-{id}"),
        "object": object,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    })
}

/// Deterministic 8-dimensional embeddings of each input.
pub fn embeddings(model: &str, body: &Map<String, Value>) -> Value {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect(),
        Some(v) => vec![v.as_str().map_or_else(|| v.to_string(), str::to_owned)],
        None => vec![],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            let vector: Vec<f32> = (0..8)
                .map(|_| {
                    for b in text.bytes() {
                        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
                    }
                    h = h.rotate_left(17);
                    ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    let tokens: u32 = inputs.iter().map(|t| count_tokens(t)).sum();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
