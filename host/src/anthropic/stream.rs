//! OpenAI chat chunks as the Messages API's stream: `message_start`, then
//! content blocks (`content_block_start`, deltas, `content_block_stop`),
//! then `message_delta` with the stop reason and usage, and `message_stop`.
//! Stateful: one encoder per client stream, fed every chunk the client is
//! to receive, across rescues.
//!
//! A chunk translated from an Anthropic backend's event for a Messages API
//! client carries that event as it came (`native::NATIVE_EVENT_FIELD`): it is
//! passed as it is (thinking signatures, citations and blocks the router
//! does not know survive), and only noted so that a rescue's continuation,
//! encoded from chunks, carries on the same blocks.

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::native::native_event;
use crate::openai::sse::put_named_event;

/// The kind of the content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, by its OpenAI index.
    Tool(u64),
    /// A block passed as the backend sent it, of a kind chunks do not carry.
    Other,
}

/// Turns one client stream's chunks into Messages API events.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    /// The input tokens the router estimated, for `message_start`.
    input_estimate: u64,
    started: bool,
    /// The open block and its index.
    open: Option<(Block, u64)>,
    next_index: u64,
    stop_reason: Option<String>,
    usage: Option<Value>,
    /// Tool-use blocks opened (a passed one's OpenAI index is the count
    /// before it).
    tools: u64,
    /// `message_delta` was passed as it came.
    delta_sent: bool,
    /// `message_stop` was passed as it came.
    stopped: bool,
}

impl StreamEncoder {
    /// An encoder for a stream whose prompt is about `input_estimate` tokens.
    pub fn new(input_estimate: u64) -> Self {
        Self { input_estimate, ..Self::default() }
    }

    /// The events for one chunk (possibly none). `trusted`: the chunk comes
    /// from an Anthropic backend's own stream, so the event it carries may
    /// pass as it came (from any other upstream the field is ignored).
    pub fn chunk(&mut self, payload: &[u8], trusted: bool) -> Bytes {
        let mut out = BytesMut::new();
        if let Some(raw) = native_event(payload).filter(|_| trusted) {
            self.pass(&mut out, raw);
            return out.freeze();
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(payload) else { return out.freeze() };
        self.start(&mut out, &chunk);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(super::answer::usage(usage));
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|c| c.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0)) else {
            return out.freeze();
        };
        let delta = &choice["delta"];
        // Reasoning from other models is left out: a `thinking` block needs
        // Anthropic's signature, and clients send blocks back (an unsigned
        // one would fail the next turn on an Anthropic backend).
        for key in ["content", "refusal"] {
            if let Some(text) = delta.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                let index = self.block(&mut out, Block::Text, json!({"type": "text", "text": ""}));
                let delta = json!({"type": "text_delta", "text": text});
                event(&mut out, "content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": delta}));
            }
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let tool = call["index"].as_u64().unwrap_or(0);
            let start = json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}});
            let index = self.block(&mut out, Block::Tool(tool), start);
            if let Some(args) = call["function"]["arguments"].as_str().filter(|a| !a.is_empty()) {
                let delta = json!({"type": "input_json_delta", "partial_json": args});
                event(&mut out, "content_block_delta", &json!({"type": "content_block_delta", "index": index, "delta": delta}));
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            // Some backends finish a tool-calling turn with `stop`.
            let called = self.tools > 0 || finish == "tool_calls";
            self.stop_reason = Some(if called && finish != "length" { "tool_use" } else { super::stop_reason(finish) }.to_owned());
        }
        out.freeze()
    }

    /// Passes a backend's own event, noting what it opens and closes.
    fn pass(&mut self, out: &mut BytesMut, raw: &RawValue) {
        let Ok(native) = serde_json::from_str::<Value>(raw.get()) else { return };
        let Some(kind) = native["type"].as_str().filter(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')) else { return };
        match kind {
            "message_start" => self.started = true,
            "content_block_start" => {
                let index = native["index"].as_u64().unwrap_or(self.next_index);
                let block = match native["content_block"]["type"].as_str() {
                    Some("text") => Block::Text,
                    Some("thinking") => Block::Thinking,
                    Some("tool_use") => {
                        self.tools += 1;
                        Block::Tool(self.tools - 1)
                    }
                    _ => Block::Other,
                };
                self.open = Some((block, index));
                self.next_index = self.next_index.max(index + 1);
            }
            "content_block_stop" => self.open = None,
            "message_delta" => {
                self.delta_sent = true;
                self.stop_reason = native["delta"]["stop_reason"].as_str().map(str::to_owned);
            }
            "message_stop" => self.stopped = true,
            _ => {}
        }
        if raw.get().contains(['\n', '\r']) {
            // One `data:` line: SSE would split on a line break.
            event(out, kind, &native);
            return;
        }
        put_named_event(out, kind, raw.get());
    }

    /// `message_start` (and a `ping`), before the first chunk's events.
    fn start(&mut self, out: &mut BytesMut, chunk: &Value) {
        if self.started {
            return;
        }
        self.started = true;
        let id = chunk["id"].as_str().unwrap_or_default();
        let message = json!({
            "id": if id.starts_with("msg_") { id.to_owned() } else { format!("msg_{id}") },
            "type": "message", "role": "assistant", "model": chunk["model"], "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
        });
        event(out, "message_start", &json!({"type": "message_start", "message": message}));
        event(out, "ping", &json!({"type": "ping"}));
    }

    /// The index of the open block of `kind`, opening it (and closing the
    /// one before) when another is open.
    fn block(&mut self, out: &mut BytesMut, kind: Block, start: Value) -> u64 {
        if let Some((open, index)) = self.open {
            if open == kind {
                return index;
            }
        }
        self.close(out);
        if let Block::Tool(_) = kind {
            self.tools += 1;
        }
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        event(out, "content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": start}));
        index
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((_, index)) = self.open.take() {
            event(out, "content_block_stop", &json!({"type": "content_block_stop", "index": index}));
        }
    }

    /// The events that end a stream that ended well (none when the
    /// backend's own end was passed).
    pub fn end(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.stopped {
            return out.freeze();
        }
        self.start(&mut out, &Value::Null);
        self.close(&mut out);
        if !self.delta_sent {
            let usage = self.usage.clone().unwrap_or_else(|| json!({"output_tokens": 0}));
            let stop_reason = self.stop_reason.as_deref().unwrap_or("end_turn");
            let delta = json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": usage});
            event(&mut out, "message_delta", &delta);
        }
        event(&mut out, "message_stop", &json!({"type": "message_stop"}));
        out.freeze()
    }

    /// The `error` event that ends a stream that could not go on; `error`
    /// is the OpenAI error object the router would send.
    pub fn error(&mut self, error: &Value) -> Bytes {
        let mut out = BytesMut::new();
        let message = error["error"]["message"].as_str().unwrap_or("the stream failed");
        let kind = if error["error"]["code"] == "stream_too_long" { "timeout_error" } else { "api_error" };
        event(&mut out, "error", &json!({"type": "error", "error": {"type": kind, "message": message}}));
        out.freeze()
    }
}

fn event(out: &mut BytesMut, name: &str, data: &Value) {
    put_named_event(out, name, &data.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(bytes).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                (name.trim_start_matches("event: ").to_owned(), serde_json::from_str(data.trim_start_matches("data: ")).unwrap())
            })
            .collect()
    }

    #[test]
    fn text_then_a_tool_call_make_two_blocks() {
        let mut e = StreamEncoder::new(12);
        let chunks = [
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"reasoning_content": "think"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}),
        ];
        let mut all = BytesMut::new();
        for c in &chunks {
            all.put(e.chunk(c.to_string().as_bytes(), false));
        }
        all.put(e.end());
        let got = events(&all);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        // The reasoning chunk gives nothing: an unsigned thinking block would
        // fail the client's next turn on an Anthropic backend.
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(got[0].1["message"]["id"], "msg_c1");
        assert_eq!(got[0].1["message"]["usage"]["input_tokens"], 12);
        assert_eq!(got[2].1["content_block"]["type"], "text");
        assert_eq!(got[6].1["index"], 1);
        assert_eq!(got[6].1["content_block"], json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}}));
        assert_eq!(got[7].1["delta"], json!({"type": "input_json_delta", "partial_json": "{\"a\":1}"}));
        assert_eq!(got[9].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(got[9].1["usage"]["output_tokens"], 3);
        assert_eq!(got[9].1["usage"]["input_tokens"], 9);
    }

    #[test]
    fn a_backends_own_events_pass_as_they_came_and_a_continuation_carries_on() {
        let mut e = StreamEncoder::new(1);
        let native = |event: &str| format!(r#"{{"id":"m","choices":[],"x_switchyard_native":{event}}}"#);
        let start = r#"{"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":5}}}"#;
        let thinking = r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#;
        let signature = r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#;
        let text = r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#;
        let mut all = BytesMut::new();
        for event in [start, thinking, signature, r#"{"type":"content_block_stop","index":0}"#, text] {
            let out = e.chunk(native(event).as_bytes(), true);
            assert!(std::str::from_utf8(&out).unwrap().contains(event), "passed verbatim: {event}");
            all.put(out);
        }
        // A rescue's continuation, from chunks: the open text block goes on.
        all.put(e.chunk(
            json!({"id": "m", "choices": [{"index": 0, "delta": {"content": "rest"}, "finish_reason": "stop"}]}).to_string().as_bytes(),
            false,
        ));
        all.put(e.end());
        let got = events(&all);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(got[5].1, json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "rest"}}));
        assert_eq!(got[6].1["index"], 1);
        // A stream whose own end was passed gets no second one.
        let mut e = StreamEncoder::new(1);
        e.chunk(native(start).as_bytes(), true);
        e.chunk(native(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}"#).as_bytes(), true);
        e.chunk(native(r#"{"type":"message_stop"}"#).as_bytes(), true);
        assert!(e.end().is_empty());
        // From any other upstream the field is ignored: no injected events.
        let mut e = StreamEncoder::new(1);
        let injected = e.chunk(native(r#"{"type":"message_stop"}"#).as_bytes(), false);
        assert!(!std::str::from_utf8(&injected).unwrap().contains("message_stop"));
    }

    #[test]
    fn errors_are_error_events() {
        let mut e = StreamEncoder::new(1);
        let got = events(&e.error(&json!({"error": {"message": "cut", "code": "stream_interrupted"}})));
        assert_eq!(got, [("error".to_owned(), json!({"type": "error", "error": {"type": "api_error", "message": "cut"}}))]);
    }
}
