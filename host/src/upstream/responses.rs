//! Backends that serve OpenAI's Responses API themselves
//! (`capabilities.responses`): a Responses API client's request goes to
//! `POST /responses` as it was sent, only `model` replaced, and a complete
//! answer comes back as it is. Stream events become OpenAI chat chunks (the
//! relay works on those), each carrying its event as it came for
//! `responses::stream` to pass on.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::http::{read_capped, Answered};
use super::openai::{sse_events, MAX_ANSWER};
use super::{Answer, AnswerShape, AttemptFailure, ChunkHead, EventStream};
use crate::native::NativeRequest;
use crate::openai::sse::SseEvent;

/// The body for a Responses backend: the client's, with `model` replaced
/// and, for a rescue by prefill, the text so far as an assistant message.
pub(super) fn body(native: &NativeRequest, model: &str, prefill: Option<&str>) -> Bytes {
    let Some(prefill) = prefill else { return native.with_model(model) };
    let mut body = native.json_with_model(model);
    let turn = json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": prefill}]});
    match body.get_mut("input") {
        Some(Value::Array(items)) => items.push(turn),
        Some(input) => *input = json!([{"role": "user", "content": input.take()}, turn]),
        None => {}
    }
    Bytes::from(Value::Object(body).to_string())
}

/// A complete answer, checked to be a JSON object, as it came.
pub(super) async fn answer(response: Answered) -> Result<Answer, AttemptFailure> {
    let body = read_capped(response, MAX_ANSWER).await?;
    let parsed: Value = serde_json::from_slice(&body).map_err(|_| AttemptFailure::Protocol("the answer is not JSON".into()))?;
    let usage = &parsed["usage"];
    let usage = usage["input_tokens"].as_u64().map(|input| (input, usage["output_tokens"].as_u64().unwrap_or(0)));
    Ok(Answer { body, usage, shape: AnswerShape::Responses, finished: None })
}

/// A streamed answer as chat chunks carrying their events.
pub(super) fn events(response: Answered, include_usage: bool) -> EventStream {
    let mut translator = EventTranslator { include_usage, ..Default::default() };
    Box::pin(sse_events(response).flat_map(move |item| {
        let out: Vec<Result<SseEvent, AttemptFailure>> = match item {
            Ok(SseEvent::Data(data)) => translator.translate(&data),
            Ok(SseEvent::Done) => vec![],
            // Responses streams end after their terminal event, without [DONE].
            Err(AttemptFailure::StreamEnded) if translator.ended => vec![],
            Err(e) => vec![Err(e)],
        };
        futures_util::stream::iter(out)
    }))
}

/// Turns Responses stream events into chat chunks.
#[derive(Default)]
struct EventTranslator {
    head: ChunkHead,
    include_usage: bool,
    /// The chat tool index of each function call, by output index.
    calls: Vec<(u64, usize)>,
    ended: bool,
}

impl EventTranslator {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Result<SseEvent, AttemptFailure> {
        self.head.chunk(delta, finish)
    }

    /// One event's chunks, the first carrying the event.
    fn translate(&mut self, data: &[u8]) -> Vec<Result<SseEvent, AttemptFailure>> {
        let mut out = self.translate_event(data);
        self.head.carry(&mut out, data);
        out
    }

    fn translate_event(&mut self, data: &[u8]) -> Vec<Result<SseEvent, AttemptFailure>> {
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return vec![Err(AttemptFailure::Protocol("a malformed event".into()))];
        };
        let at = event["output_index"].as_u64();
        match event["type"].as_str().unwrap_or_default() {
            "response.created" => {
                let r = &event["response"];
                self.head.id = r["id"].as_str().unwrap_or("resp").to_owned();
                self.head.model = r["model"].as_str().unwrap_or_default().to_owned();
                self.head.created = r["created_at"].as_u64().unwrap_or_else(crate::mock_answers::unix_now);
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            "response.output_item.added" if event["item"]["type"] == "function_call" => {
                let item = &event["item"];
                let index = self.calls.len();
                self.calls.push((at.unwrap_or(0), index));
                let head =
                    json!({"index": index, "id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": ""}});
                vec![self.chunk(json!({"tool_calls": [head]}), None)]
            }
            "response.output_text.delta" => vec![self.chunk(json!({"content": event["delta"]}), None)],
            "response.refusal.delta" => vec![self.chunk(json!({"refusal": event["delta"]}), None)],
            "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
                vec![self.chunk(json!({"reasoning_content": event["delta"]}), None)]
            }
            "response.function_call_arguments.delta" => match self.calls.iter().find(|(o, _)| Some(*o) == at) {
                Some((_, index)) => {
                    vec![self.chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": event["delta"]}}]}), None)]
                }
                None => vec![],
            },
            kind @ ("response.completed" | "response.incomplete") => {
                self.ended = true;
                let r = &event["response"];
                let finish = match (kind, r["incomplete_details"]["reason"].as_str()) {
                    ("response.incomplete", Some("content_filter")) => "content_filter",
                    ("response.incomplete", _) => "length",
                    _ if !self.calls.is_empty() => "tool_calls",
                    _ => "stop",
                };
                let mut out = vec![self.chunk(json!({}), Some(finish))];
                if self.include_usage {
                    let u = &r["usage"];
                    let (input, output) = (u["input_tokens"].as_u64().unwrap_or(0), u["output_tokens"].as_u64().unwrap_or(0));
                    let cached = u["input_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
                    let usage = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output,
                        "prompt_tokens_details": {"cached_tokens": cached}});
                    out.push(self.head.without_choices(Some(usage)));
                }
                out.push(Ok(SseEvent::Done));
                out
            }
            "response.failed" => {
                let message = event["response"]["error"]["message"].as_str().unwrap_or("the response failed");
                vec![Err(AttemptFailure::ErrorEvent(crate::text::cut_at_char_boundary(message, 512).to_owned()))]
            }
            "error" => {
                let message = event["message"].as_str().unwrap_or("an error event");
                vec![Err(AttemptFailure::ErrorEvent(crate::text::cut_at_char_boundary(message, 512).to_owned()))]
            }
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_chunks_each_carrying_its_event() {
        let mut t = EventTranslator { include_usage: true, ..Default::default() };
        let events = [
            json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "model": "gpt", "created_at": 5}}),
            json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": {"type": "function_call", "call_id": "call_1", "name": "f"}}),
            json!({"type": "response.function_call_arguments.delta", "sequence_number": 2, "output_index": 0, "delta": "{}"}),
            json!({"type": "response.output_item.done", "sequence_number": 3, "output_index": 0, "item": {}}),
            json!({"type": "response.completed", "sequence_number": 4, "response": {"usage": {"input_tokens": 3, "output_tokens": 2}}}),
        ];
        let mut chunks = Vec::new();
        for e in &events {
            for out in t.translate(e.to_string().as_bytes()) {
                if let SseEvent::Data(d) = out.unwrap() {
                    chunks.push(serde_json::from_slice::<Value>(&d).unwrap());
                }
            }
        }
        let carried: Vec<&Value> = chunks.iter().filter_map(|c| c.get(crate::native::NATIVE_EVENT_FIELD)).collect();
        assert_eq!(carried, events.iter().collect::<Vec<_>>());
        assert_eq!(chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"], "call_1");
        assert_eq!(chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[5]["usage"]["total_tokens"], 5);
        assert!(matches!(&t.translate(br#"{"type":"error","message":"boom"}"#)[..], [Err(AttemptFailure::ErrorEvent(m))] if m == "boom"));
    }
}
