//! Anthropic's Messages API upstreams. A Messages API client's request goes
//! as it was sent (only `model` replaced) and a complete answer comes back
//! as it is; an OpenAI chat request is translated to `/v1/messages`, its
//! answer back. Stream events become OpenAI chunks either way (the relay
//! works on those; `anthropic::stream` frames them again for Messages API
//! clients).
//!
//! What the translation from chat cannot honour is refused (`n` > 1,
//! `response_format` JSON modes, `logprobs`, tool arguments that are not
//! JSON), so that the next target serves it; `seed` is dropped (a best-effort
//! hint in OpenAI's API too); `temperature` above 1 (Anthropic's maximum)
//! becomes 1.

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Uri;
use serde_json::{json, Map, Value};

use super::http::{endpoint, read_capped, Answered, HttpClient, MAX_ERROR_BODY};
use super::openai::{sse_events, MAX_ANSWER};
use super::{Answer, AnswerShape, AttemptFailure, Call, ChunkHead, Reply};
use crate::config::BackendConfig;
use crate::mock_answers::unix_now;
use crate::native::{NativeApi, NativeRequest};
use crate::openai::inbound::InboundRequest;
use crate::openai::sse::SseEvent;

const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the client nor the backend's configuration
/// gives one: the smallest output limit of current Claude models.
const DEFAULT_MAX_TOKENS: u32 = 8192;

pub(super) struct AnthropicClient {
    http: HttpClient,
    url: Uri,
    count_url: Uri,
    key: Option<HeaderValue>,
    /// `max_tokens` for chat requests that set none.
    max_tokens: u32,
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
        Ok(Self {
            http: HttpClient::new(config)?,
            url: endpoint(&base, "/messages")?,
            count_url: endpoint(&base, "/messages/count_tokens")?,
            key,
            max_tokens: config.max_output_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        })
    }

    /// Posts `body` to `url` with the client's Anthropic headers, if it sent
    /// any; a non-2xx answer is a failure with its body as it came.
    async fn post(&self, url: &Uri, body: Bytes, inbound: &InboundRequest, request_id: &str) -> Result<Answered, AttemptFailure> {
        let mut headers = HeaderMap::with_capacity(6);
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", id);
        }
        let passed = messages_request(inbound).map(|n| n.headers.as_slice()).unwrap_or_default();
        if !passed.iter().any(|(name, _)| name == "anthropic-version") {
            headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        }
        for (name, value) in passed {
            headers.append(name.clone(), value.clone());
        }
        if let Some(key) = &self.key {
            headers.insert(HeaderName::from_static("x-api-key"), key.clone());
        }
        self.http.post(url, headers, body).await
    }

    /// `POST /v1/messages/count_tokens` for a Messages API request.
    pub(super) async fn count_tokens(&self, inbound: &InboundRequest, model: &str, request_id: &str) -> Result<Answer, AttemptFailure> {
        let native =
            messages_request(inbound).ok_or_else(|| AttemptFailure::Unsupported("count_tokens takes a Messages API request".into()))?;
        let response = self.post(&self.count_url, native.with_model(model), inbound, request_id).await?;
        let body = read_capped(response, MAX_ERROR_BODY).await?;
        serde_json::from_slice::<Map<String, Value>>(&body)
            .map_err(|_| AttemptFailure::Protocol("the answer is not a JSON object".into()))?;
        Ok(Answer { body, usage: None, shape: AnswerShape::Messages, finished: None })
    }

    pub(super) async fn call(&self, call: &Call<'_>) -> Result<Reply, AttemptFailure> {
        let native = messages_request(call.inbound);
        let body = match native {
            Some(native) => match call.prefill {
                Some(prefill) => crate::anthropic::inbound::with_prefill(native, call.model, prefill),
                None => native.with_model(call.model),
            },
            None => {
                let mut body = to_messages_request(&call.inbound.body, call.model, call.inbound.stream, self.max_tokens)?;
                if let (Some(prefill), Some(messages)) = (call.prefill, body["messages"].as_array_mut()) {
                    // Anthropic continues a last assistant turn natively.
                    push_block(messages, "assistant", json!({"type": "text", "text": prefill}));
                }
                Bytes::from(body.to_string())
            }
        };
        let response = match self.post(&self.url, body, call.inbound, call.request_id).await {
            // A Messages API client gets Anthropic's error as it is.
            Err(AttemptFailure::Status { status, retry_after, body }) if native.is_none() => {
                return Err(AttemptFailure::Status { status, retry_after, body: to_openai_error(&body) })
            }
            other => other?,
        };
        if call.inbound.stream {
            let mut translator =
                StreamTranslator { include_usage: call.inbound.include_usage, native: native.is_some(), ..Default::default() };
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
        if native.is_some() {
            let usage = crate::anthropic::answer::usage_counts(&message["usage"]);
            return Ok(Reply::Complete(Answer { body, usage, shape: AnswerShape::Messages, finished: None }));
        }
        let answer = to_chat_completion(&message);
        let usage = crate::openai::usage(&answer);
        Ok(Reply::Complete(Answer { body: Bytes::from(answer.to_string()), usage, shape: AnswerShape::Chat, finished: None }))
    }
}

/// The client's own request, when it came in on the Messages API.
fn messages_request(inbound: &InboundRequest) -> Option<&NativeRequest> {
    inbound.native.as_ref().filter(|n| n.api == NativeApi::Messages)
}

/// OpenAI chat request → Anthropic Messages request; `max_tokens` when the
/// client sets none.
fn to_messages_request(body: &Map<String, Value>, model: &str, stream: bool, max_tokens: u32) -> Result<Value, AttemptFailure> {
    let unsupported = |what: &str| AttemptFailure::Unsupported(format!("Anthropic backends cannot take {what}"));
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("`n` > 1"));
    }
    if body.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("`logprobs`"));
    }
    match body.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") => {}
        Some(other) => return Err(unsupported(&format!("`response_format` `{other}`"))),
    }
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for (i, m) in body.get("messages").and_then(Value::as_array).into_iter().flatten().enumerate() {
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
                for (j, call) in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    let f = &call["function"];
                    let arguments = f.get("arguments").and_then(Value::as_str).filter(|a| !a.trim().is_empty()).unwrap_or("{}");
                    let input: Value = serde_json::from_str(arguments)
                        .map_err(|_| unsupported(&format!("messages[{i}].tool_calls[{j}].function.arguments that are not JSON")))?;
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
        body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64).unwrap_or(u64::from(max_tokens));
    let mut out = json!({"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream});
    if !system.is_empty() {
        out["system"] = json!(system.join("\n\n"));
    }
    // OpenAI's temperature runs to 2, Anthropic's to 1.
    // Newer Claude models refuse both together; temperature wins.
    match (body.get("temperature").and_then(Value::as_f64), body.get("top_p").filter(|v| !v.is_null())) {
        (Some(t), _) => out["temperature"] = json!(t.min(1.0)),
        (None, Some(p)) => out["top_p"] = p.clone(),
        (None, None) => {}
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
        if body.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) && out["tool_choice"]["type"] != "none" {
            if out.get("tool_choice").is_none() {
                out["tool_choice"] = json!({"type": "auto"});
            }
            out["tool_choice"]["disable_parallel_tool_use"] = json!(true);
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
        // Anthropic refuses empty text blocks (chat has `""` beside tool calls).
        Some(Value::String(s)) if s.is_empty() => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) != Some("text") || p["text"].as_str().is_some_and(|t| !t.is_empty()))
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

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`. A paused turn
/// (`pause_turn`, a server tool's long run) is not a whole answer: `length`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded" | "pause_turn") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Anthropic `usage` → OpenAI `usage`: cache reads and writes are prompt
/// tokens, the reads also `cached_tokens`.
fn chat_usage(usage: &Value) -> Value {
    let (prompt, completion) = crate::anthropic::answer::usage_counts(usage).unwrap_or((0, 0));
    let cached = usage["cache_read_input_tokens"].as_u64().unwrap_or(0);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}})
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
    let thinking: String = blocks.iter().filter(|b| b["type"] == "thinking").filter_map(|b| b["thinking"].as_str()).collect();
    if !thinking.is_empty() {
        message["reasoning_content"] = json!(thinking);
    }
    json!({
        "id": m["id"],
        "object": "chat.completion",
        "created": unix_now(),
        "model": m["model"],
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(m["stop_reason"].as_str())}],
        "usage": chat_usage(&m["usage"]),
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
    head: ChunkHead,
    include_usage: bool,
    /// Each chunk carries the event it came from, for a Messages API client
    /// (`anthropic::stream` passes it as it is).
    native: bool,
    /// Usage as `message_start` and `message_delta` reported it.
    usage: Map<String, Value>,
    /// Index of the current tool call among tool calls, per content block.
    tool_index: Option<usize>,
    tool_calls: usize,
    stopped: bool,
}

impl StreamTranslator {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Result<SseEvent, AttemptFailure> {
        self.head.chunk(delta, finish)
    }

    fn translate(&mut self, data: &[u8]) -> Vec<Result<SseEvent, AttemptFailure>> {
        let mut out = self.translate_event(data);
        if self.native {
            self.head.carry(&mut out, data);
        }
        out
    }

    fn translate_event(&mut self, data: &[u8]) -> Vec<Result<SseEvent, AttemptFailure>> {
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return vec![Err(AttemptFailure::Protocol("a malformed event".into()))];
        };
        match event["type"].as_str() {
            Some("message_start") => {
                let m = &event["message"];
                self.head.id = m["id"].as_str().unwrap_or("msg").to_owned();
                self.head.model = m["model"].as_str().unwrap_or_default().to_owned();
                self.head.created = unix_now();
                if let Some(usage) = m["usage"].as_object() {
                    self.usage.extend(usage.clone());
                }
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
                Some("thinking_delta") => vec![self.chunk(json!({"reasoning_content": event["delta"]["thinking"]}), None)],
                // Only a `tool_use` block's input is a tool call's arguments
                // (server tools stream input too).
                Some("input_json_delta") => match self.tool_index {
                    Some(index) => vec![self
                        .chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": event["delta"]["partial_json"]}}]}), None)],
                    None => vec![],
                },
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
                // Later counts replace earlier ones (output grows; input may come late).
                if let Some(usage) = event["usage"].as_object() {
                    self.usage.extend(usage.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())));
                }
                let mut out = vec![self.chunk(json!({}), Some(finish_reason(event["delta"]["stop_reason"].as_str())))];
                // The counts are final here: a break before `message_stop`
                // then finds the answer complete, and is not rescued.
                if self.include_usage {
                    out.push(self.head.without_choices(Some(chat_usage(&Value::Object(self.usage.clone())))));
                }
                out
            }
            Some("message_stop") => {
                self.stopped = true;
                vec![Ok(SseEvent::Done)]
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
        let out = to_messages_request(&body, "claude-x", true, 8192).unwrap();
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
    fn what_anthropic_cannot_honour_is_refused_and_the_rest_adjusted() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let refused = [
            (json!({"n": 2}), "`n` > 1"),
            (json!({"logprobs": true}), "`logprobs`"),
            (json!({"response_format": {"type": "json_object"}}), "`response_format` `json_object`"),
            (
                json!({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}]}),
                "messages[0].tool_calls[0].function.arguments that are not JSON",
            ),
        ];
        for (extra, what) in refused {
            let mut body: Map<String, Value> = serde_json::from_value(json!({"messages": user})).unwrap();
            body.extend(extra.as_object().unwrap().clone());
            match to_messages_request(&body, "c", false, 100) {
                Err(AttemptFailure::Unsupported(message)) => assert!(message.contains(what), "{message}"),
                other => panic!("{what}: {:?}", other.map(|v| v.to_string())),
            }
        }
        let body: Map<String, Value> = serde_json::from_value(json!({
            "temperature": 1.7, "seed": 3, "parallel_tool_calls": false, "response_format": {"type": "text"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "c", "content": "ok"},
            ],
        }))
        .unwrap();
        let out = to_messages_request(&body, "c", false, 1234).unwrap();
        assert_eq!(out["temperature"], 1.0);
        assert_eq!(out["max_tokens"], 1234, "the backend's max_output_tokens when the client sets none");
        assert!(out.get("seed").is_none());
        assert_eq!(out["tool_choice"], json!({"type": "auto", "disable_parallel_tool_use": true}));
        assert_eq!(
            out["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}]),
            "no empty text block"
        );
    }

    #[test]
    fn stop_reasons_and_cache_usage_reach_openai_clients() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("pause_turn", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(finish_reason(Some(stop)), finish, "{stop}");
        }
        let usage =
            chat_usage(&json!({"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7}));
        assert_eq!(
            usage,
            json!({"prompt_tokens": 115, "completion_tokens": 7, "total_tokens": 122, "prompt_tokens_details": {"cached_tokens": 100}})
        );
    }

    #[test]
    fn a_messages_client_gets_each_event_on_its_chunk() {
        let mut t = StreamTranslator { include_usage: true, native: true, ..Default::default() };
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":7}}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        for e in events {
            let out: Vec<SseEvent> = t.translate(e.as_bytes()).into_iter().map(Result::unwrap).collect();
            let carried: Vec<Value> = out
                .iter()
                .filter_map(|e| if let SseEvent::Data(d) = e { serde_json::from_slice::<Value>(d).ok() } else { None })
                .filter_map(|c| c.get(crate::native::NATIVE_EVENT_FIELD).cloned())
                .collect();
            assert_eq!(carried, [serde_json::from_str::<Value>(e).unwrap()], "{e}");
        }
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
