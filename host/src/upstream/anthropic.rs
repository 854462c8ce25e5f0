//! Anthropic's Messages API behind the OpenAI chat API: requests are
//! translated to `/v1/messages`, answers and stream events back to OpenAI's
//! shapes.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde_json::{json, Map, Value};

use super::failure::{from_reqwest, redirected, retry_after};
use super::openai::sse_events;
use super::openai::{read_capped, MAX_ANSWER, MAX_ERROR_BODY};
use super::{http_client, Answer, AttemptFailure, Call, Reply};
use crate::config::BackendConfig;
use crate::mock_answers::unix_now;
use crate::openai::sse::SseEvent;

const API_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u64 = 4096;

pub(super) struct AnthropicClient {
    http: reqwest::Client,
    url: String,
    key: Option<HeaderValue>,
}

impl AnthropicClient {
    pub(super) fn new(config: &BackendConfig) -> Result<Self, String> {
        let base = config.base_url.clone().ok_or("base_url is required")?.trim_end_matches('/').to_owned();
        let key = match config.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(k) => {
                let mut v = HeaderValue::from_str(k).map_err(|_| "api_key has characters a header cannot carry")?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self { http: http_client(config)?, url: format!("{base}/messages"), key })
    }

    pub(super) async fn call(&self, call: &Call<'_>) -> Result<Reply, AttemptFailure> {
        let mut body = to_messages_request(&call.inbound.body, call.model, call.inbound.stream)?;
        if let (Some(prefill), Some(messages)) = (call.prefill, body["messages"].as_array_mut()) {
            // Anthropic continues a last assistant turn natively.
            push_block(messages, "assistant", json!({"type": "text", "text": prefill}));
        }
        let mut request = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header("anthropic-version", API_VERSION)
            .header("x-request-id", call.request_id)
            .body(body.to_string());
        if let Some(key) = &self.key {
            request = request.header("x-api-key", key.clone());
        }
        let response = super::with_trace_context(request).send().await.map_err(from_reqwest)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(redirected(status.as_u16()));
        }
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let body = read_capped(response, MAX_ERROR_BODY).await.unwrap_or_default();
            return Err(AttemptFailure::Status { status: status.as_u16(), retry_after, body: to_openai_error(&body) });
        }
        if call.inbound.stream {
            let mut translator = StreamTranslator { include_usage: call.inbound.include_usage, ..Default::default() };
            let events = sse_events(response).flat_map(move |item| {
                let out: Vec<Result<SseEvent, AttemptFailure>> = match item {
                    Ok(SseEvent::Data(data)) => translator.translate(&data),
                    // Anthropic streams end with `message_stop`, not [DONE].
                    Ok(SseEvent::Done) => vec![],
                    Err(AttemptFailure::StreamEnded) if translator.stopped => vec![],
                    Err(e) => vec![Err(e)],
                };
                futures_util::stream::iter(out)
            });
            return Ok(Reply::Stream(Box::pin(events)));
        }
        let body = read_capped(response, MAX_ANSWER).await?;
        let message: Value = serde_json::from_slice(&body).map_err(|_| AttemptFailure::Protocol("the answer is not JSON".into()))?;
        let answer = to_chat_completion(&message);
        let usage = crate::openai::usage(&answer);
        Ok(Reply::Complete(Answer { body: Bytes::from(answer.to_string()), usage }))
    }
}

/// OpenAI chat request → Anthropic Messages request.
fn to_messages_request(body: &Map<String, Value>, model: &str, stream: bool) -> Result<Value, AttemptFailure> {
    let unsupported = |what: &str| AttemptFailure::Unsupported(format!("Anthropic backends cannot take {what}"));
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        match role {
            "system" | "developer" => system.push(text_of(m.get("content"))),
            "tool" | "function" => {
                let block = json!({"type": "tool_result", "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null), "content": text_of(m.get("content"))});
                push_block(&mut messages, "user", block);
            }
            "assistant" | "user" => {
                for block in content_blocks(m.get("content"))? {
                    push_block(&mut messages, role, block);
                }
                for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let f = &call["function"];
                    let input: Value =
                        f.get("arguments").and_then(Value::as_str).and_then(|a| serde_json::from_str(a).ok()).unwrap_or_else(|| json!({}));
                    push_block(
                        &mut messages,
                        "assistant",
                        json!({"type": "tool_use", "id": call["id"], "name": f["name"], "input": input}),
                    );
                }
            }
            other => return Err(unsupported(&format!("the role `{other}`"))),
        }
    }
    let max_tokens =
        body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_TOKENS);
    let mut out = json!({"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream});
    if !system.is_empty() {
        out["system"] = json!(system.join("\n\n"));
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = body.get(key) {
            out[key] = v.clone();
        }
    }
    match body.get("stop") {
        Some(Value::String(s)) => out["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => out["stop_sequences"] = json!(a),
        _ => {}
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                json!({"name": f["name"], "description": f.get("description").cloned().unwrap_or(json!("")), "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"}))})
            })
            .collect();
        out["tools"] = json!(tools);
        match body.get("tool_choice") {
            Some(Value::String(s)) if s == "required" => out["tool_choice"] = json!({"type": "any"}),
            Some(Value::String(s)) if s == "none" => out["tool_choice"] = json!({"type": "none"}),
            Some(Value::Object(c)) => {
                out["tool_choice"] =
                    json!({"type": "tool", "name": c.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null)})
            }
            _ => {}
        }
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out["metadata"] = json!({"user_id": user});
    }
    Ok(out)
}

fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

fn content_blocks(content: Option<&Value>) -> Result<Vec<Value>, AttemptFailure> {
    match content {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "text", "text": p["text"]})),
                Some("image_url") => {
                    let url = p["image_url"]["url"].as_str().unwrap_or_default();
                    match url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) {
                        Some((media_type, data)) => {
                            Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}))
                        }
                        None => Ok(json!({"type": "image", "source": {"type": "url", "url": url}})),
                    }
                }
                other => {
                    Err(AttemptFailure::Unsupported(format!("Anthropic backends cannot take `{}` content", other.unwrap_or("unknown"))))
                }
            })
            .collect(),
        Some(_) => Ok(vec![]),
    }
}

/// Appends a block, merging consecutive turns of the same role as Anthropic
/// requires alternating roles.
fn push_block(messages: &mut Vec<Value>, role: &str, block: Value) {
    if let Some(last) = messages.last_mut().filter(|m| m["role"] == role) {
        if let Some(content) = last["content"].as_array_mut() {
            content.push(block);
            return;
        }
    }
    messages.push(json!({"role": role, "content": [block]}));
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Anthropic message → OpenAI chat completion.
fn to_chat_completion(m: &Value) -> Value {
    let blocks = m["content"].as_array().cloned().unwrap_or_default();
    let text: String = blocks.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect();
    let tool_calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| json!({"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": b["input"].to_string()}}))
        .collect();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    let (input, output) = (m["usage"]["input_tokens"].as_u64().unwrap_or(0), m["usage"]["output_tokens"].as_u64().unwrap_or(0));
    json!({
        "id": m["id"],
        "object": "chat.completion",
        "created": unix_now(),
        "model": m["model"],
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(m["stop_reason"].as_str())}],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
    })
}

/// Anthropic error body → OpenAI error body.
fn to_openai_error(body: &[u8]) -> Bytes {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v["error"]["message"].as_str().unwrap_or("upstream error");
    let kind = v["error"]["type"].as_str().unwrap_or("upstream_error");
    Bytes::from(json!({"error": {"message": message, "type": kind, "param": null, "code": null}}).to_string())
}

/// Turns Anthropic stream events into OpenAI chunks.
#[derive(Default)]
struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    input_tokens: u64,
    output_tokens: u64,
    /// Index of the current tool call among tool calls, per content block.
    tool_index: Option<usize>,
    tool_calls: usize,
    stopped: bool,
}

impl StreamTranslator {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Result<SseEvent, AttemptFailure> {
        let chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        Ok(SseEvent::Data(Bytes::from(chunk.to_string())))
    }

    fn translate(&mut self, data: &[u8]) -> Vec<Result<SseEvent, AttemptFailure>> {
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return vec![Err(AttemptFailure::Protocol("a malformed event".into()))];
        };
        match event["type"].as_str() {
            Some("message_start") => {
                let m = &event["message"];
                self.id = m["id"].as_str().unwrap_or("msg").to_owned();
                self.model = m["model"].as_str().unwrap_or_default().to_owned();
                self.created = unix_now();
                self.input_tokens = m["usage"]["input_tokens"].as_u64().unwrap_or(0);
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            Some("content_block_start") if event["content_block"]["type"] == "tool_use" => {
                let b = &event["content_block"];
                let index = self.tool_calls;
                self.tool_calls += 1;
                self.tool_index = Some(index);
                vec![self.chunk(json!({"tool_calls": [{"index": index, "id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": ""}}]}), None)]
            }
            Some("content_block_delta") => match event["delta"]["type"].as_str() {
                Some("text_delta") => vec![self.chunk(json!({"content": event["delta"]["text"]}), None)],
                Some("input_json_delta") => {
                    let index = self.tool_index.unwrap_or(0);
                    vec![self
                        .chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": event["delta"]["partial_json"]}}]}), None)]
                }
                _ => vec![],
            },
            // Anthropic's mid-stream failure (`overloaded_error` and the like).
            Some("error") => {
                let message = event["error"]["message"].as_str().unwrap_or("an error event");
                vec![Err(AttemptFailure::ErrorEvent(crate::text::cut_at_char_boundary(message, 512).to_owned()))]
            }
            Some("content_block_stop") => {
                self.tool_index = None;
                vec![]
            }
            Some("message_delta") => {
                self.output_tokens = event["usage"]["output_tokens"].as_u64().unwrap_or(self.output_tokens);
                vec![self.chunk(json!({}), Some(finish_reason(event["delta"]["stop_reason"].as_str())))]
            }
            Some("message_stop") => {
                self.stopped = true;
                let mut out = Vec::new();
                if self.include_usage {
                    let usage = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [],
                        "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": self.output_tokens, "total_tokens": self.input_tokens + self.output_tokens},
                    });
                    out.push(Ok(SseEvent::Data(Bytes::from(usage.to_string()))));
                }
                out.push(Ok(SseEvent::Done));
                out
            }
            _ => vec![], // ping, content_block_start of text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_translates_to_messages() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "model": "auto", "max_tokens": 100, "temperature": 0.2, "stop": "END", "user": "u1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
        }))
        .unwrap();
        let out = to_messages_request(&body, "claude-x", true).unwrap();
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["system"], "Be brief.");
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        assert_eq!(out["messages"][0]["content"][1]["source"], json!({"type": "base64", "media_type": "image/png", "data": "AAAA"}));
        assert_eq!(out["messages"][1]["content"][0], json!({"type": "tool_use", "id": "c1", "name": "look", "input": {"q": 1}}));
        assert_eq!(out["messages"][2]["content"][0]["type"], "tool_result");
    }

    #[test]
    fn answers_translate_to_chat_completions() {
        let m = json!({"id": "msg_1", "model": "claude-x", "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5},
            "content": [{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": 1}}]});
        let c = to_chat_completion(&m);
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"q\":1}");
        assert_eq!(c["choices"][0]["logprobs"], Value::Null);
        assert_eq!(c["usage"]["total_tokens"], 15);
        let plain = to_chat_completion(
            &json!({"id": "m", "model": "x", "stop_reason": "end_turn", "content": [{"type": "text", "text": "hi"}], "usage": {}}),
        );
        assert!(plain["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(plain["choices"][0]["message"]["refusal"], Value::Null);
    }

    #[test]
    fn stream_events_translate_to_chunks() {
        let mut t = StreamTranslator { include_usage: true, ..Default::default() };
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 7}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
            json!({"type": "message_stop"}),
        ];
        let out: Vec<SseEvent> = events.iter().flat_map(|e| t.translate(e.to_string().as_bytes())).map(Result::unwrap).collect();
        let data: Vec<Value> =
            out.iter().filter_map(|e| if let SseEvent::Data(d) = e { serde_json::from_slice(d).ok() } else { None }).collect();
        assert_eq!(data[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(data[1]["choices"][0]["delta"]["content"], "Hel");
        assert_eq!(data[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(data[4]["usage"]["total_tokens"], 9);
        assert_eq!(out.last(), Some(&SseEvent::Done));
    }
}
