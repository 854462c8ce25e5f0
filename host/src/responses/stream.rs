//! OpenAI chat chunks as the Responses API's stream of semantic events:
//! `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added`, its content (`response.content_part.added`,
//! `response.output_text.delta`/`.done`, `response.content_part.done`, or
//! `response.function_call_arguments.delta`/`.done`) and
//! `response.output_item.done`; then `response.completed` (or
//! `response.incomplete`) with the whole response and its usage. Every
//! event has the next `sequence_number`. Stateful: one encoder per client
//! stream, fed every chunk the client is to receive, across rescues.
//!
//! A chunk from a backend that serves the Responses API itself carries its
//! event as it came (`native::NATIVE_EVENT_FIELD`): it is passed as it is,
//! and noted (items, their text, the sequence numbers) so that a rescue's
//! continuation, encoded from chunks, carries on the same items.

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::answer;
use crate::native::native_event;
use crate::openai::sse::put_named_event;

/// One output item and what it holds so far.
#[derive(Debug)]
struct Item {
    /// The item as added (its `type`, `id` and the like).
    value: Value,
    /// Text (a message's, a reasoning item's) or arguments (a call's).
    text: String,
    /// The OpenAI index of a function call.
    tool: Option<u64>,
    /// `response.output_item.done` was sent.
    done: bool,
}

impl Item {
    fn kind(&self) -> &str {
        self.value["type"].as_str().unwrap_or_default()
    }

    fn id(&self) -> String {
        self.value["id"].as_str().unwrap_or_default().to_owned()
    }

    /// The item as it is now, complete.
    fn finished(&self) -> Value {
        match self.kind() {
            "message" => answer::message_item(&self.id(), &self.text),
            "reasoning" => answer::reasoning_item(&self.id(), &self.text),
            "function_call" => answer::function_item(
                &self.id(),
                self.value["call_id"].as_str().unwrap_or_default(),
                self.value["name"].as_str().unwrap_or_default(),
                &self.text,
            ),
            _ => self.value.clone(),
        }
    }
}

/// Turns one client stream's chunks into Responses API events.
#[derive(Debug)]
pub struct ResponsesEncoder {
    /// The response's fields that repeat the request.
    skeleton: Map<String, Value>,
    started: bool,
    sequence: u64,
    items: Vec<Item>,
    /// The item being streamed, by index into `items`.
    open: Option<usize>,
    finish: Option<String>,
    usage: Option<Value>,
    /// The backend's own terminal event (`response.completed`, ...) passed.
    ended: bool,
}

impl ResponsesEncoder {
    /// An encoder for a stream answering `request` (the client's body).
    pub fn new(request: &Map<String, Value>) -> Self {
        Self {
            skeleton: answer::skeleton(request, crate::mock_answers::unix_now()),
            started: false,
            sequence: 0,
            items: Vec::new(),
            open: None,
            finish: None,
            usage: None,
            ended: false,
        }
    }

    fn emit(&mut self, out: &mut BytesMut, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        put_named_event(out, kind, &data.to_string());
    }

    /// The response object as it stands, with `status`.
    fn response(&self, status: &str) -> Value {
        let mut r = self.skeleton.clone();
        r.insert("status".into(), json!(status));
        if status != "in_progress" {
            // An item still open when the stream failed did not finish.
            let item = |i: &Item| {
                let mut value = i.finished();
                if !i.done && value.get("status").is_some() {
                    value["status"] = json!("incomplete");
                }
                value
            };
            r.insert("output".into(), Value::Array(self.items.iter().map(item).collect()));
            r.insert("usage".into(), self.usage.clone().unwrap_or(Value::Null));
        }
        Value::Object(r)
    }

    /// The events for one chunk (possibly none). `trusted`: the chunk comes
    /// from a Responses API backend's own stream, so the event it carries
    /// may pass as it came.
    pub fn chunk(&mut self, payload: &[u8], trusted: bool) -> Bytes {
        let mut out = BytesMut::new();
        if let Some(raw) = native_event(payload).filter(|_| trusted) {
            self.pass(&mut out, raw);
            return out.freeze();
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(payload) else { return out.freeze() };
        self.start(&mut out, &chunk);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(answer::usage(usage));
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|c| c.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0)) else {
            return out.freeze();
        };
        let delta = &choice["delta"];
        for key in ["reasoning_content", "reasoning"] {
            if let Some(text) = delta.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                let (at, id) = self.item(&mut out, "reasoning", None, &chunk);
                self.items[at].text.push_str(text);
                let data = json!({"item_id": id, "output_index": at, "content_index": 0, "delta": text});
                self.emit(&mut out, "response.reasoning_text.delta", data);
                break;
            }
        }
        for key in ["content", "refusal"] {
            if let Some(text) = delta.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                let (at, id) = self.item(&mut out, "message", None, &chunk);
                self.items[at].text.push_str(text);
                let data = json!({"item_id": id, "output_index": at, "content_index": 0, "delta": text, "logprobs": []});
                self.emit(&mut out, "response.output_text.delta", data);
            }
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let (at, id) = self.item(&mut out, "function_call", Some(call), &chunk);
            if let Some(args) = call["function"]["arguments"].as_str().filter(|a| !a.is_empty()) {
                self.items[at].text.push_str(args);
                self.emit(&mut out, "response.function_call_arguments.delta", json!({"item_id": id, "output_index": at, "delta": args}));
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(finish.to_owned());
        }
        out.freeze()
    }

    /// `response.created` and `response.in_progress`, before the first
    /// chunk's events.
    fn start(&mut self, out: &mut BytesMut, chunk: &Value) {
        if self.started {
            return;
        }
        self.started = true;
        let id = answer::id("resp", chunk["id"].as_str().unwrap_or_default());
        self.skeleton.insert("id".into(), json!(id));
        self.skeleton.insert("model".into(), chunk["model"].clone());
        let response = self.response("in_progress");
        self.emit(out, "response.created", json!({"response": response}));
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    /// The index and id of the open item of `kind` (for a call, the one with
    /// the call's OpenAI index), adding it (and finishing the one before)
    /// when another is open.
    fn item(&mut self, out: &mut BytesMut, kind: &str, call: Option<&Value>, chunk: &Value) -> (usize, String) {
        let tool = call.map(|c| c["index"].as_u64().unwrap_or(0));
        if let Some(at) = self.open {
            let item = &self.items[at];
            if item.kind() == kind && item.tool == tool && !item.done {
                return (at, item.id());
            }
        }
        self.close(out);
        let at = self.items.len();
        let upstream_id = chunk["id"].as_str().unwrap_or_default();
        let value = match kind {
            "message" => {
                json!({"type": "message", "id": answer::id("msg", &format!("{upstream_id}{at}")), "status": "in_progress", "role": "assistant", "content": []})
            }
            "reasoning" => json!({"type": "reasoning", "id": answer::id("rs", &format!("{upstream_id}{at}")), "summary": []}),
            _ => {
                let call = call.unwrap_or(&Value::Null);
                let call_id = call["id"].as_str().unwrap_or_default();
                json!({"type": "function_call", "id": answer::id("fc", &format!("{call_id}{at}")), "call_id": call_id,
                    "name": call["function"]["name"].as_str().unwrap_or_default(), "arguments": "", "status": "in_progress"})
            }
        };
        let id = value["id"].as_str().unwrap_or_default().to_owned();
        self.emit(out, "response.output_item.added", json!({"output_index": at, "item": value}));
        match kind {
            "message" => {
                let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
                self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": at, "content_index": 0, "part": part}));
            }
            "reasoning" => {
                let part = json!({"type": "reasoning_text", "text": ""});
                self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": at, "content_index": 0, "part": part}));
            }
            _ => {}
        }
        self.items.push(Item { value, text: String::new(), tool, done: false });
        self.open = Some(at);
        (at, id)
    }

    /// Finishes the open item, if one is.
    fn close(&mut self, out: &mut BytesMut) {
        let Some(at) = self.open.take() else { return };
        if self.items[at].done {
            return;
        }
        self.items[at].done = true;
        let (id, text, finished) = (self.items[at].id(), self.items[at].text.clone(), self.items[at].finished());
        let kind = self.items[at].kind().to_owned();
        match kind.as_str() {
            "message" => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": at, "content_index": 0, "text": text, "logprobs": []}),
                );
                let part = &finished["content"][0];
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": at, "content_index": 0, "part": part}));
            }
            "reasoning" => {
                self.emit(
                    out,
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": at, "content_index": 0, "text": text}),
                );
                let part = json!({"type": "reasoning_text", "text": text});
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": at, "content_index": 0, "part": part}));
            }
            "function_call" => {
                let name = finished["name"].clone();
                let data = json!({"item_id": id, "output_index": at, "name": name, "arguments": text});
                self.emit(out, "response.function_call_arguments.done", data);
            }
            _ => {}
        }
        self.emit(out, "response.output_item.done", json!({"output_index": at, "item": finished}));
    }

    /// Passes a backend's own event, noting its items and sequence.
    fn pass(&mut self, out: &mut BytesMut, raw: &RawValue) {
        let Ok(native) = serde_json::from_str::<Value>(raw.get()) else { return };
        let Some(kind) = native["type"].as_str().filter(|k| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')) else {
            return;
        };
        if let Some(n) = native["sequence_number"].as_u64() {
            self.sequence = self.sequence.max(n + 1);
        }
        let at = native["output_index"].as_u64().map(|i| i as usize);
        match kind {
            "response.created" => {
                self.started = true;
                for key in ["id", "model", "created_at"] {
                    if let Some(v) = native["response"].get(key) {
                        self.skeleton.insert(key.into(), v.clone());
                    }
                }
            }
            "response.output_item.added" => {
                let value = native["item"].clone();
                let tool = (value["type"] == "function_call").then(|| self.items.iter().filter(|i| i.tool.is_some()).count() as u64);
                let at = at.unwrap_or(self.items.len());
                if at == self.items.len() {
                    self.items.push(Item { value, text: String::new(), tool, done: false });
                    self.open = Some(at);
                }
            }
            "response.output_text.delta" | "response.function_call_arguments.delta" | "response.reasoning_text.delta" => {
                if let (Some(item), Some(delta)) = (at.and_then(|at| self.items.get_mut(at)), native["delta"].as_str()) {
                    item.text.push_str(delta);
                }
            }
            "response.output_item.done" => {
                if let Some(item) = at.and_then(|at| self.items.get_mut(at)) {
                    item.done = true;
                    item.value = native["item"].clone();
                }
                if self.open == at {
                    self.open = None;
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => self.ended = true,
            _ => {}
        }
        if raw.get().contains(['\n', '\r']) {
            put_named_event(out, kind, &native.to_string());
        } else {
            put_named_event(out, kind, raw.get());
        }
    }

    /// The events that end a stream that ended well (none when the
    /// backend's own end was passed).
    pub fn end(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.ended {
            return out.freeze();
        }
        self.start(&mut out, &Value::Null);
        self.close(&mut out);
        let (status, incomplete) = answer::status(self.finish.as_deref());
        let mut response = self.response(status);
        response["incomplete_details"] = incomplete;
        let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
        self.emit(&mut out, kind, json!({"response": response}));
        out.freeze()
    }

    /// The events that end a stream that could not go on: an `error` event,
    /// then `response.failed`; `error` is the OpenAI error object.
    pub fn error(&mut self, error: &Value) -> Bytes {
        let mut out = BytesMut::new();
        let message = error["error"]["message"].as_str().unwrap_or("the stream failed");
        let code = error["error"]["code"].as_str().unwrap_or("server_error");
        self.start(&mut out, &Value::Null);
        self.emit(&mut out, "error", json!({"code": code, "message": message, "param": null}));
        let mut response = self.response("failed");
        response["error"] = json!({"code": "server_error", "message": message});
        self.emit(&mut out, "response.failed", json!({"response": response}));
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(bytes)
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').unwrap();
                (name.trim_start_matches("event: ").to_owned(), serde_json::from_str(data.trim_start_matches("data: ")).unwrap())
            })
            .collect()
    }

    fn request() -> Map<String, Value> {
        serde_json::from_value(json!({"model": "auto", "input": "hi", "instructions": "Be terse."})).unwrap()
    }

    #[test]
    fn text_then_a_call_make_two_items_in_order() {
        let mut e = ResponsesEncoder::new(&request());
        let chunks = [
            json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
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
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert!(got.iter().enumerate().all(|(i, (name, data))| data["sequence_number"] == i && data["type"] == name.as_str()));
        assert_eq!(got[0].1["response"]["instructions"], "Be terse.");
        assert_eq!(got[6].1["text"], "Hello");
        assert_eq!(got[9].1["output_index"], 1);
        let done = &got[13].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["usage"]["total_tokens"], 12);
        assert_eq!(done["id"], got[0].1["response"]["id"], "one response id");
    }

    #[test]
    fn a_backends_own_events_pass_and_a_continuation_carries_on_numbering() {
        let mut e = ResponsesEncoder::new(&request());
        let native = |event: &str| format!(r#"{{"id":"r","choices":[],"x_switchyard_native":{event}}}"#);
        let mut all = BytesMut::new();
        for event in [
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_up","model":"gpt","output":[]}}"#,
            r#"{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"type":"message","id":"msg_up","role":"assistant","content":[]}}"#,
            r#"{"type":"response.content_part.added","sequence_number":2,"item_id":"msg_up","output_index":0,"content_index":0,"part":{"type":"output_text","text":""}}"#,
            r#"{"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_up","output_index":0,"content_index":0,"delta":"Hel"}"#,
        ] {
            let out = e.chunk(native(event).as_bytes(), true);
            assert!(std::str::from_utf8(&out).unwrap().contains(event), "passed verbatim");
            all.put(out);
        }
        all.put(e.chunk(
            json!({"id": "x", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}).to_string().as_bytes(),
            false,
        ));
        all.put(e.end());
        let got = events(&all);
        assert_eq!(
            got[4].1,
            json!({"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_up", "output_index": 0, "content_index": 0, "delta": "lo", "logprobs": []})
        );
        assert_eq!(got[5].1["text"], "Hello");
        let done = &got.last().unwrap().1;
        assert_eq!((done["type"].as_str(), done["response"]["id"].as_str()), (Some("response.completed"), Some("resp_up")));
        assert_eq!(done["response"]["output"][0]["content"][0]["text"], "Hello");
    }

    #[test]
    fn a_cut_answer_is_incomplete_and_a_failure_is_failed() {
        let mut e = ResponsesEncoder::new(&request());
        e.chunk(
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "cu"}, "finish_reason": "length"}]}).to_string().as_bytes(),
            false,
        );
        let got = events(&e.end());
        let last = &got.last().unwrap().1;
        assert_eq!(
            (last["type"].as_str(), last["response"]["incomplete_details"]["reason"].as_str()),
            (Some("response.incomplete"), Some("max_output_tokens"))
        );
        let mut e = ResponsesEncoder::new(&request());
        let got = events(&e.error(&json!({"error": {"message": "broke", "code": "stream_interrupted"}})));
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["response.created", "response.in_progress", "error", "response.failed"]);
        assert_eq!(got[3].1["response"]["error"]["message"], "broke");
        // Cut mid-message: the message in the failed response is incomplete, not completed.
        let mut e = ResponsesEncoder::new(&request());
        e.chunk(json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "half an ans"}}]}).to_string().as_bytes(), false);
        let got = events(&e.error(&json!({"error": {"message": "broke", "code": "stream_interrupted"}})));
        let failed = &got.last().unwrap().1["response"];
        assert_eq!((failed["status"].as_str(), failed["output"][0]["status"].as_str()), (Some("failed"), Some("incomplete")), "{failed}");
        assert_eq!(failed["output"][0]["content"][0]["text"], "half an ans");
    }
}
