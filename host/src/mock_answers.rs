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

/// What is left of an answer once `prefill` (the start of an assistant turn
/// given as the last message) is taken off: how a model continues a turn.
/// An answer that does not start with `prefill` comes whole, as from a
/// model that ignored it.
pub fn continuation(tokens: &[String], prefill: &str) -> Vec<String> {
    if !tokens.concat().starts_with(prefill) {
        return tokens.to_vec();
    }
    let mut skip = prefill.len();
    let mut rest = Vec::new();
    for t in tokens {
        if skip >= t.len() {
            skip -= t.len();
            continue;
        }
        // `prefill` ends on a character boundary of the answer, and so of `t`.
        rest.push(t[skip..].to_owned());
        skip = 0;
    }
    rest
}

/// The assistant turn a chat request ends with, if it does (a prefill).
pub fn prefill_of(body: &Map<String, Value>) -> Option<String> {
    let last = body.get("messages")?.as_array()?.last()?;
    (last.get("role")?.as_str()? == "assistant").then(|| match last.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    })
}

/// Whether a request asks for JSON output: chat's `response_format` or the
/// Responses API's `text.format` of type `json_object` or `json_schema`.
pub fn wants_json(body: &Map<String, Value>) -> bool {
    let format = body.get("response_format").or_else(|| body.get("text").and_then(|t| t.get("format")));
    format.and_then(|f| f.get("type")).and_then(Value::as_str).is_some_and(|t| t == "json_object" || t == "json_schema")
}

/// A mock tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Its id, the same for the same prompt and tool.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, JSON.
    pub arguments: String,
}

/// The call a chat (or Messages API) request with tools gets, unless its
/// `tool_choice` is none or it ends with a tool's result: its first tool,
/// with the prompt's excerpt as the argument.
pub fn tool_call(body: &Map<String, Value>, prompt: &str) -> Option<ToolCall> {
    let choice = body.get("tool_choice");
    if choice.and_then(Value::as_str) == Some("none") || choice.and_then(|c| c.get("type")).and_then(Value::as_str) == Some("none") {
        return None;
    }
    // Chat and Messages API `messages`, Responses API `input` items.
    let items = body.get("messages").or_else(|| body.get("input")).and_then(Value::as_array);
    if let Some(last) = items.and_then(|items| items.last()) {
        let is_result = |b: &Value| b.get("type").and_then(Value::as_str) == Some("tool_result");
        if last.get("role").and_then(Value::as_str) == Some("tool")
            || last.get("type").and_then(Value::as_str) == Some("function_call_output")
            || last.get("content").and_then(Value::as_array).is_some_and(|c| c.iter().any(is_result))
        {
            return None;
        }
    }
    let tool = body.get("tools")?.as_array()?.first()?;
    let name = tool.get("function").unwrap_or(tool).get("name")?.as_str()?.to_owned();
    let excerpt: String = prompt.split_whitespace().take(8).collect::<Vec<_>>().join(" ");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes().chain(name.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    Some(ToolCall { id: format!("call_{h:016x}"), name, arguments: json!({"query": excerpt, "limit": 3}).to_string() })
}

/// `text` in pieces of about `size` bytes, cut on character boundaries.
pub fn fragments(text: &str, size: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        out.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    out
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
        ApiSurface::Chat | ApiSurface::Messages | ApiSurface::Responses => body
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
        ApiSurface::Chat | ApiSurface::Messages | ApiSurface::Responses => {
            let message = json!({"role": "assistant", "content": text, "refusal": null});
            chat_completion(id, model, created, message, "stop", usage(p, c))
        }
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
            chat_chunk(id, model, created, Value::Object(delta), finish.then_some("stop"))
        }
    }
}

/// A streamed chat chunk with `delta` and an optional finish reason.
pub fn chat_chunk(id: &str, model: &str, created: u64, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// A complete chat answer that calls `call`.
pub fn tool_call_completion(id: &str, model: &str, created: u64, call: &ToolCall, prompt_tokens: u32) -> Value {
    let message = json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    ]});
    chat_completion(id, model, created, message, "tool_calls", usage(prompt_tokens, count_tokens(&call.arguments)))
}

/// A `chat.completion` with one choice.
fn chat_completion(id: &str, model: &str, created: u64, message: Value, finish: &str, usage: Value) -> Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": usage,
    })
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
