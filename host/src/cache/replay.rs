//! A kept answer in the other form: a streamed answer's chunks as one chat
//! completion, a completion as chunks, and what a stream captures.

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// A stream's chunks as they pass, kept when the stream ends cleanly and
/// fits in `max_bytes`.
#[derive(Debug)]
pub struct Capture {
    chunks: Vec<Bytes>,
    usage: Option<Value>,
    bytes: usize,
    max_bytes: usize,
    /// Past the size, a backend's own events, or a rescue: not kept.
    spoiled: bool,
}

impl Capture {
    /// A capture of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self { chunks: Vec::new(), usage: None, bytes: 0, max_bytes, spoiled: false }
    }

    /// One chunk the client was sent.
    pub fn push(&mut self, chunk: &Bytes) {
        if self.spoiled {
            return;
        }
        self.bytes += chunk.len();
        let parsed: Option<Map<String, Value>> = serde_json::from_slice(chunk).ok();
        let Some(mut parsed) = parsed.filter(|_| self.bytes <= self.max_bytes) else {
            return self.spoil();
        };
        if parsed.contains_key(crate::native::NATIVE_EVENT_FIELD) {
            return self.spoil();
        }
        if let Some(usage) = parsed.remove("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage);
        }
        let no_choices = parsed.get("choices").and_then(Value::as_array).is_none_or(Vec::is_empty);
        if no_choices {
            return;
        }
        self.chunks.push(Bytes::from(Value::Object(parsed).to_string()));
    }

    /// The stream cannot be kept.
    pub fn spoil(&mut self) {
        self.spoiled = true;
        self.chunks = Vec::new();
    }

    /// What to keep, if the stream may be kept.
    pub fn finish(self) -> Option<Captured> {
        if self.spoiled || self.chunks.is_empty() {
            return None;
        }
        let completion = completion_from_chunks(&self.chunks, self.usage)?;
        let usage = usage_of(&completion);
        Some(Captured { completion: Bytes::from(completion.to_string()), usage, chunks: self.chunks })
    }
}

/// A stream kept: its completion, that completion's usage, its chunks.
#[derive(Debug)]
pub struct Captured {
    /// The chat completion the chunks make.
    pub completion: Bytes,
    /// `(prompt, completion)` tokens, when the stream reported them.
    pub usage: Option<(u64, u64)>,
    /// The chunks, usage chunk excluded.
    pub chunks: Vec<Bytes>,
}

/// The chat completion that `chunks` stream (the first choice), with
/// `usage`; `None` when they never finish.
pub fn completion_from_chunks(chunks: &[Bytes], usage: Option<Value>) -> Option<Value> {
    let mut head: Option<Map<String, Value>> = None;
    let (mut content, mut reasoning, mut refusal) = (String::new(), String::new(), String::new());
    let mut calls: Vec<Map<String, Value>> = Vec::new();
    let mut finish = None;
    for chunk in chunks {
        let chunk: Map<String, Value> = serde_json::from_slice(chunk).ok()?;
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else { continue };
        if head.is_none() {
            let mut h = chunk.clone();
            h.remove("choices");
            head = Some(h);
        }
        let delta = &choice["delta"];
        for (field, text) in [("content", &mut content), ("reasoning_content", &mut reasoning), ("refusal", &mut refusal)] {
            if let Some(piece) = delta.get(field).and_then(Value::as_str) {
                text.push_str(piece);
            }
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            if calls.len() <= index {
                calls.resize_with(index + 1, Map::new);
            }
            let kept = &mut calls[index];
            for field in ["id", "type"] {
                if let Some(v) = call.get(field).filter(|v| !v.is_null()) {
                    kept.insert(field.into(), v.clone());
                }
            }
            let function = kept.entry("function").or_insert_with(|| json!({"name": "", "arguments": ""}));
            for field in ["name", "arguments"] {
                if let Some(piece) = call.pointer(&format!("/function/{field}")).and_then(Value::as_str) {
                    let so_far = function[field].as_str().unwrap_or_default().to_owned();
                    function[field] = Value::String(so_far + piece);
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
            finish = Some(reason.clone());
        }
    }
    let mut completion = head?;
    let finish = finish?;
    let mut message =
        json!({"role": "assistant", "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(content) }});
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    message["refusal"] = if refusal.is_empty() { Value::Null } else { Value::String(refusal) };
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls.into_iter().map(Value::Object).collect());
    }
    completion.insert("object".into(), json!("chat.completion"));
    completion.insert("choices".into(), json!([{"index": 0, "message": message, "finish_reason": finish}]));
    if let Some(usage) = usage {
        completion.insert("usage".into(), usage);
    }
    Some(Value::Object(completion))
}

/// `completion` as the chunks of a stream (the first choice): role, text,
/// each tool call, the finish. No usage chunk ([`usage_chunk`] makes it).
pub fn chunks_from_completion(completion: &Value) -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"], "model": completion["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(fp) = completion.get("system_fingerprint") {
            c["system_fingerprint"] = fp.clone();
        }
        Bytes::from(c.to_string())
    };
    let message = &completion["choices"][0]["message"];
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    for field in ["reasoning_content", "content", "refusal"] {
        if let Some(text) = message.get(field).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            chunks.push(chunk(json!({field: text}), Value::Null));
        }
    }
    for (index, call) in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let mut call = call.clone();
        call["index"] = json!(index);
        chunks.push(chunk(json!({"tool_calls": [call]}), Value::Null));
    }
    chunks.push(chunk(json!({}), completion["choices"][0]["finish_reason"].clone()));
    chunks
}

/// The usage chunk of a stream that replays `completion`, if it has usage.
pub fn usage_chunk(completion: &Value) -> Option<Bytes> {
    let usage = completion.get("usage").filter(|u| !u.is_null())?;
    let c = json!({
        "id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"], "model": completion["model"],
        "choices": [], "usage": usage,
    });
    Some(Bytes::from(c.to_string()))
}

/// Whether a plain answer is a chat completion that finished (one worth
/// keeping).
pub fn finished(completion: &[u8]) -> bool {
    // Only the first choice's finish reason is read; the rest is skipped unparsed.
    #[derive(serde::Deserialize)]
    struct Completion {
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        finish_reason: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Completion>(completion).is_ok_and(|c| c.choices.first().is_some_and(|c| c.finish_reason.is_some()))
}

/// `(prompt, completion)` tokens of a completion's usage.
pub fn usage_of(completion: &Value) -> Option<(u64, u64)> {
    let usage = completion.get("usage")?;
    Some((usage.get("prompt_tokens")?.as_u64()?, usage.get("completion_tokens")?.as_u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Value {
        json!({"id": "c1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": null}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    }

    #[test]
    fn a_completion_streams_and_comes_back_the_same() {
        let c = completion();
        let chunks = chunks_from_completion(&c);
        assert_eq!(completion_from_chunks(&chunks, c.get("usage").cloned()), Some(c));
    }

    #[test]
    fn tool_calls_stream_in_pieces_and_come_back_whole() {
        let pieces = [
            json!({"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "look", "arguments": ""}}]}, "finish_reason": null}]}),
            json!({"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}, "finish_reason": null}]}),
            json!({"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}]}),
        ];
        let chunks: Vec<Bytes> = pieces.iter().map(|p| Bytes::from(p.to_string())).collect();
        let c = completion_from_chunks(&chunks, None).expect("finished");
        let call = &c["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(
            (call["id"].as_str(), call["function"]["name"].as_str(), call["function"]["arguments"].as_str()),
            (Some("t1"), Some("look"), Some("{\"q\":1}"))
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null);
        // And back: the replayed stream carries the same call.
        let again = completion_from_chunks(&chunks_from_completion(&c), None).expect("finished");
        assert_eq!(again["choices"][0]["message"]["tool_calls"][0]["function"], call["function"]);
    }

    #[test]
    fn a_capture_keeps_only_clean_streams_that_fit() {
        let chunks = chunks_from_completion(&completion());
        let mut kept = Capture::new(1 << 20);
        chunks.iter().for_each(|c| kept.push(c));
        kept.push(&usage_chunk(&completion()).expect("usage"));
        let kept = kept.finish().expect("kept");
        assert_eq!((serde_json::from_slice::<Value>(&kept.completion).ok(), kept.chunks), (Some(completion()), chunks.clone()));
        assert_eq!(kept.usage, Some((3, 2)));
        let mut small = Capture::new(40);
        chunks.iter().for_each(|c| small.push(c));
        assert!(small.finish().is_none(), "over the size");
        let mut unfinished = Capture::new(1 << 20);
        chunks[..2].iter().for_each(|c| unfinished.push(c));
        assert!(unfinished.finish().is_none(), "no finish reason");
    }
}
