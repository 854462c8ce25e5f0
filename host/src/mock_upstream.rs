//! `switchyard mock-upstream`: a real OpenAI-compatible (chat, completions,
//! embeddings, Responses) and Anthropic Messages HTTP server for tests,
//! demos and benchmarks, with faults on demand. It records what it receives
//! (for the Messages and Responses APIs also the bytes and API headers), so
//! tests can check what reached which upstream; `POST /v1/traces` takes
//! OTLP/HTTP trace exports too.
//!
//! Answers are deterministic: the same model and prompt give the same text
//! (`answer=canonical` leaves the model out, so every backend asked with it
//! gives the same text; `answer=alternative` starts with another word, and
//! its tool calls have another id); a request with tools gets a call to its
//! first tool unless it ends with a tool's result; a request for JSON output
//! gets `{"answer": <text>}`; a chat request whose last message is an
//! assistant turn gets the rest of the answer after that turn (prefill).
//!
//! A fault is chosen by the requested model, `name?fault=<fault>&delay_ms=N
//! &chunks=N&retry_after=S&answer=canonical&gap_ms=N&cached=N` (`gap_ms`: the
//! time between stream events; `cached`: prompt tokens the usage reports as
//! read from a prompt cache), or by an `x-mock-fault` header:
//! `429`, `429-bare` (no Retry-After), `500-once` or `transient` (per model
//! string: the first request 500, then healthy), `503`, `reset` (connection
//! closed before headers), `hang` (no response), `slow-first-token` (waits
//! `delay_ms`); in a stream after `chunks` events: `cut` (connection
//! broken), `close` (closed cleanly), `stall` (silence), `malformed` (a
//! broken chunk), `error-event` (an error event, then closed); `no-done`
//! (every event but `[DONE]`); `no-prefill` (a 400 for a request whose last
//! message is an assistant turn); `context-length` and `content-policy`
//! (400s), `flap` (per model string, `fail` requests answered 503 then
//! `pass` answered well, over and over), `redirect` (a 307 to the URL in
//! `to`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::contract::ApiSurface;
use crate::mock_answers as answers;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Settings of the mock server.
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// Tokens per answer.
    pub answer_tokens: u32,
    /// Delay before every answer, in ms.
    pub latency_ms: u64,
}

impl Default for MockSettings {
    fn default() -> Self {
        Self { answer_tokens: 16, latency_ms: 0 }
    }
}

/// Requests remembered for `GET /mock/requests`; older ones are forgotten,
/// so a benchmark neither grows memory nor stalls on reallocation.
const REMEMBERED: usize = 10_000;
/// Bodies up to this size are also remembered byte for byte.
const RAW_REMEMBERED_BYTES: usize = 16 << 10;

struct MockState {
    settings: MockSettings,
    received: Mutex<VecDeque<Value>>,
    counts: Mutex<HashMap<String, u32>>,
}

impl MockState {
    /// Keeps `record` for `GET /mock/requests`, forgetting the oldest.
    fn remember(&self, record: Value) {
        let mut received = self.received.lock().unwrap();
        if received.len() == REMEMBERED {
            received.pop_front();
        }
        received.push_back(record);
    }

    /// Counts a request for `model`; the first is 1.
    fn count(&self, model: &str) -> u32 {
        let mut counts = self.counts.lock().unwrap();
        let n = counts.entry(model.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

/// Serves until `shutdown` resolves.
pub async fn run(listener: TcpListener, settings: MockSettings, shutdown: impl Future<Output = ()>) {
    let state = Arc::new(MockState { settings, received: Mutex::new(VecDeque::with_capacity(REMEMBERED)), counts: Mutex::default() });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), peer, req));
                    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // No cap on the streams of an h2c connection (hyper's default is
                    // 200): one router connection carries a whole load.
                    builder.http2().max_concurrent_streams(None);
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
            () = &mut shutdown => return,
        }
    }
}

/// A fault and its parameters.
#[derive(Debug, Default, Clone)]
struct Fault {
    name: String,
    delay_ms: u64,
    chunks: usize,
    retry_after: Option<String>,
    /// Where `redirect` points.
    to: Option<String>,
    fail: u32,
    pass: u32,
    /// `gap_ms`: the time between stream events (default 0.2 ms).
    gap_ms: Option<u64>,
    /// `answer=canonical`: the answer's text does not name the model;
    /// `answer=alternative`: it starts with another word.
    answer: Option<String>,
    /// `cached=N`: the usage says N prompt tokens came from a prompt cache.
    cached: Option<u64>,
}

fn fault_of(model: &str, header: Option<&str>) -> Fault {
    let mut fault = Fault { chunks: 3, fail: 1, pass: 1, ..Default::default() };
    if let Some((_, query)) = model.split_once('?') {
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("fault", v)) => fault.name = v.to_owned(),
                Some(("delay_ms", v)) => fault.delay_ms = v.parse().unwrap_or(0),
                Some(("chunks", v)) => fault.chunks = v.parse().unwrap_or(3),
                Some(("retry_after", v)) => fault.retry_after = Some(v.to_owned()),
                Some(("to", v)) => fault.to = Some(v.to_owned()),
                Some(("fail", v)) => fault.fail = v.parse().unwrap_or(1),
                Some(("pass", v)) => fault.pass = v.parse().unwrap_or(1),
                Some(("answer", v)) => fault.answer = Some(v.to_owned()),
                Some(("gap_ms", v)) => fault.gap_ms = v.parse().ok(),
                Some(("cached", v)) => fault.cached = v.parse().ok(),
                _ => {}
            }
        }
    }
    if let Some(h) = header {
        fault.name = h.to_owned();
    }
    fault
}

async fn handle(state: Arc<MockState>, peer: std::net::SocketAddr, request: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    if parts.method == Method::GET && path == "/mock/requests" {
        let received = state.received.lock().unwrap().clone();
        return Ok(json_response(StatusCode::OK, json!(received)));
    }
    if parts.method == Method::DELETE && path == "/mock/requests" {
        state.received.lock().unwrap().clear();
        state.counts.lock().unwrap().clear();
        return Ok(json_response(StatusCode::OK, json!({"cleared": true})));
    }
    if parts.method == Method::GET && path == "/v1/models" {
        return Ok(json_response(
            StatusCode::OK,
            json!({"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]}),
        ));
    }
    if parts.method == Method::POST && path == "/v1/traces" {
        // An OTLP/HTTP collector's endpoint, so trace export can be checked.
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        state.remember(json!({"path": path, "otlp_hex": hex}));
        return Ok(raw_response(StatusCode::OK, "application/x-protobuf", Bytes::new()));
    }
    let surface = match path.as_str() {
        "/v1/chat/completions" | "/v1/messages" | "/v1/messages/count_tokens" | "/v1/responses" => ApiSurface::Chat,
        "/v1/completions" => ApiSurface::Completion,
        "/v1/embeddings" => ApiSurface::Embeddings,
        _ => {
            return Ok(json_response(
                StatusCode::NOT_FOUND,
                json!({"error": {"message": format!("no route {path}"), "type": "invalid_request_error", "param": null, "code": null}}),
            ))
        }
    };
    let anthropic = path.starts_with("/v1/messages");
    let responses = path == "/v1/responses";
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "body is not a JSON object", "type": "invalid_request_error", "param": null, "code": null}}),
        ));
    };
    let model = body.get("model").and_then(Value::as_str).unwrap_or("mock").to_owned();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut record = json!({
        "path": path, "model": model, "body": body,
        "authorization": header("authorization"), "x_api_key": header("x-api-key"), "x_request_id": header("x-request-id"),
        "traceparent": header("traceparent"), "peer": peer.to_string(), "http": format!("{:?}", parts.version),
    });
    // What a pass-through must keep: the bytes (of small bodies, for tests:
    // a load of large prompts would hold them all) and the API headers.
    if bytes.len() <= RAW_REMEMBERED_BYTES {
        record["raw"] = json!(String::from_utf8_lossy(&bytes));
    }
    if anthropic || responses {
        record["anthropic_version"] = json!(header("anthropic-version"));
        record["anthropic_beta"] = json!(header("anthropic-beta"));
    }
    state.remember(record);
    if path == "/v1/messages/count_tokens" {
        return Ok(json_response(StatusCode::OK, json!({"input_tokens": answers::count_tokens(&anthropic_prompt(&body))})));
    }
    let fault = fault_of(&model, header("x-mock-fault").as_deref());
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let delay = Duration::from_millis(state.settings.latency_ms + if fault.name == "slow-first-token" { fault.delay_ms } else { 0 });

    let error = |status: StatusCode, code: &str, message: &str| {
        if anthropic {
            let kind = crate::anthropic::error_type(status.as_u16());
            return json_response(status, json!({"type": "error", "error": {"type": kind, "message": message}}));
        }
        json_response(status, json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}))
    };
    match fault.name.as_str() {
        "429" => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", "mock: rate limited");
            r.headers_mut().insert("retry-after", fault.retry_after.as_deref().unwrap_or("1").parse().unwrap());
            return Ok(r);
        }
        "429-bare" => return Ok(error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", "mock: rate limited")),
        "redirect" => {
            let mut r = error(StatusCode::TEMPORARY_REDIRECT, "moved", "mock: redirected");
            if let Some(Ok(to)) = fault.to.as_deref().map(hyper::header::HeaderValue::from_str) {
                r.headers_mut().insert(hyper::header::LOCATION, to);
            }
            return Ok(r);
        }
        "500-once" | "transient" if state.count(&model) == 1 => {
            return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "mock: failing once"));
        }
        "flap" => {
            let period = (fault.fail + fault.pass).max(1);
            if (state.count(&model) - 1) % period < fault.fail {
                return Ok(error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "mock: flapping"));
            }
        }
        "503" => return Ok(error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "mock: unavailable")),
        "reset" => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock: reset")),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        "no-prefill" if answers::prefill_of(&body).is_some() => {
            return Ok(error(StatusCode::BAD_REQUEST, "invalid_request_error", "mock: the last message must be a user message"));
        }
        "context-length" => {
            return Ok(error(StatusCode::BAD_REQUEST, "context_length_exceeded", "mock: this model's maximum context length is 10 tokens"))
        }
        "content-policy" => {
            return Ok(error(StatusCode::BAD_REQUEST, "content_policy_violation", "mock: the request was refused by the content policy"))
        }
        _ => {}
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let clean_model = model.split('?').next().unwrap_or(&model).to_owned();
    let id = format!("{:08x}", rand::random::<u32>());
    let created = answers::unix_now();
    let prompt = if anthropic {
        anthropic_prompt(&body)
    } else if responses {
        responses_prompt(&body)
    } else {
        answers::prompt_text(surface, &body)
    };
    let named = if fault.answer.as_deref() == Some("canonical") { "the router" } else { clean_model.as_str() };
    let mut tokens = answers::answer_tokens(named, &prompt, state.settings.answer_tokens);
    if let Some(first) = tokens.first_mut().filter(|_| fault.answer.as_deref() == Some("alternative")) {
        *first = "That".into();
    }
    if let Some(prefill) = answers::prefill_of(&body).filter(|_| surface == ApiSurface::Chat) {
        tokens = answers::continuation(&tokens, &prefill);
    }
    if answers::wants_json(&body) {
        tokens = answers::fragments(&json!({"answer": tokens.concat()}).to_string(), 8);
    }
    let mut tool_call = (surface == ApiSurface::Chat).then(|| answers::tool_call(&body, &prompt)).flatten();
    if let Some(call) = tool_call.as_mut().filter(|_| fault.answer.as_deref() == Some("alternative")) {
        call.id.push_str("-alt");
    }

    if !stream {
        let answer = match (&tool_call, anthropic) {
            _ if responses => responses_answer(&id, &clean_model, &prompt, &tokens, tool_call.as_ref()),
            (Some(call), true) => anthropic_tool_use(&id, &clean_model, &prompt, call),
            (Some(call), false) => answers::tool_call_completion(&id, &clean_model, created, call, answers::count_tokens(&prompt)),
            (None, true) => anthropic_message(&id, &clean_model, &prompt, &tokens),
            (None, false) => answers::complete(surface, &id, &clean_model, created, &body, &tokens),
        };
        let answer = with_cached(answer, fault.cached);
        return Ok(match fault.name.as_str() {
            "malformed" => raw_response(StatusCode::OK, "application/json", Bytes::from_static(b"{\"choices\": [")),
            "cut" => broken_body(answer.to_string()),
            "stall" => stalled_body(),
            _ => json_response(StatusCode::OK, answer),
        });
    }

    // Stream events, then the fault's ending.
    let mut events: Vec<String> = if responses {
        responses_events(&id, &clean_model, &prompt, &tokens, tool_call.as_ref())
    } else if anthropic {
        anthropic_events(&id, &clean_model, &prompt, &tokens, tool_call.as_ref())
    } else {
        let mut events = vec![];
        if surface == ApiSurface::Chat {
            events.push(sse(&answers::chunk(surface, &id, &clean_model, created, None, true, false)));
        }
        let completion_tokens = match &tool_call {
            Some(call) => {
                let head = json!({"tool_calls": [{"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]});
                events.push(sse(&answers::chat_chunk(&id, &clean_model, created, head, None)));
                for part in answers::fragments(&call.arguments, 8) {
                    let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]});
                    events.push(sse(&answers::chat_chunk(&id, &clean_model, created, delta, None)));
                }
                events.push(sse(&answers::chat_chunk(&id, &clean_model, created, json!({}), Some("tool_calls"))));
                answers::count_tokens(&call.arguments)
            }
            None => {
                for t in &tokens {
                    events.push(sse(&answers::chunk(surface, &id, &clean_model, created, Some(t), false, false)));
                }
                events.push(sse(&answers::chunk(surface, &id, &clean_model, created, None, false, true)));
                tokens.len() as u32
            }
        };
        if body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool) == Some(true) {
            let usage = answers::usage_chunk(surface, &id, &clean_model, created, answers::count_tokens(&prompt), completion_tokens);
            events.push(sse(&with_cached(usage, fault.cached)));
        }
        events.push("data: [DONE]\n\n".into());
        events
    };
    enum End {
        Clean,
        Error,
        Stall,
    }
    let end = match fault.name.as_str() {
        "cut" => {
            events.truncate(fault.chunks);
            End::Error
        }
        "stall" => {
            events.truncate(fault.chunks);
            End::Stall
        }
        "close" => {
            events.truncate(fault.chunks);
            End::Clean
        }
        "malformed" => {
            events.truncate(fault.chunks);
            events.push("data: {\"choices\": [{\"delta\": \n\n".into());
            End::Clean
        }
        "error-event" => {
            events.truncate(fault.chunks);
            events.push(if anthropic {
                let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "mock: overloaded mid-stream"}});
                format!("event: error\ndata: {error}\n\n")
            } else if responses {
                let error = json!({"type": "error", "code": "server_error", "message": "mock: overloaded mid-stream", "param": null, "sequence_number": fault.chunks});
                format!("event: error\ndata: {error}\n\n")
            } else {
                sse(&json!({"error": {"message": "mock: overloaded mid-stream", "type": "server_error", "param": null, "code": "overloaded"}}))
            });
            End::Clean
        }
        "no-done" => {
            events.pop();
            End::Clean
        }
        _ => End::Clean,
    };
    let gap = fault.gap_ms.map_or(Duration::from_micros(200), Duration::from_millis);
    let frames = futures_util::stream::unfold((events.into_iter().enumerate(), Some(end)), move |(mut events, end)| async move {
        if let Some((i, e)) = events.next() {
            // A small gap between events, so that clients see separate
            // chunks; none before the first, which goes with the headers
            // (tokio's timer has 1 ms ticks: a sleep there would blur the
            // time to the first event that benchmarks measure).
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            return Some((Ok(Frame::data(Bytes::from(e))), (events, end)));
        }
        match end? {
            End::Clean => None,
            End::Error => Some((Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "mock: stream cut")), (events, None))),
            End::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                None
            }
        }
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    Ok(response)
}

fn sse(value: &Value) -> String {
    format!("data: {value}\n\n")
}

fn json_response(status: StatusCode, body: Value) -> Response<Body> {
    raw_response(status, "application/json", Bytes::from(body.to_string()))
}

fn raw_response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).map_err(|e: Infallible| match e {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", content_type.parse().unwrap());
    r
}

/// Headers and half a body, then a broken connection.
fn broken_body(answer: String) -> Response<Body> {
    let half = Bytes::from(answer[..answer.len() / 2].to_owned());
    let frames = futures_util::stream::iter([Ok(Frame::data(half)), Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "mock: cut"))]);
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

/// Headers, then silence.
fn stalled_body() -> Response<Body> {
    let frames = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Frame::data(Bytes::new()))
    });
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

/// The last user message of a Responses API request.
fn responses_prompt(body: &Map<String, Value>) -> String {
    match body.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let last_user = items.iter().rev().find(|i| i["role"] == "user");
            match last_user.map(|m| &m["content"]) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(" "),
                _ => String::new(),
            }
        }
        _ => String::new(),
    }
}

/// A Responses API `response` object: the answer's text, or a call.
fn responses_answer(id: &str, model: &str, prompt: &str, tokens: &[String], call: Option<&answers::ToolCall>) -> Value {
    let output = match call {
        Some(call) => {
            json!([{"type": "function_call", "id": format!("fc_{id}"), "call_id": call.id, "name": call.name, "arguments": call.arguments, "status": "completed"}])
        }
        None => json!([{"type": "message", "id": format!("msg_{id}"), "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": tokens.concat(), "annotations": []}]}]),
    };
    let output_tokens = call.map_or(tokens.len(), |c| answers::count_tokens(&c.arguments) as usize);
    let input_tokens = answers::count_tokens(prompt);
    json!({
        "id": format!("resp_{id}"), "object": "response", "created_at": answers::unix_now(), "status": "completed", "model": model,
        "output": output, "error": null, "incomplete_details": null,
        "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": input_tokens as usize + output_tokens},
    })
}

/// The Responses API's stream of the same answer.
fn responses_events(id: &str, model: &str, prompt: &str, tokens: &[String], call: Option<&answers::ToolCall>) -> Vec<String> {
    let done = responses_answer(id, model, prompt, tokens, call);
    let mut started = done.clone();
    started["status"] = json!("in_progress");
    started["output"] = json!([]);
    started["usage"] = Value::Null;
    let item = done["output"][0].clone();
    let item_id = item["id"].clone();
    let mut events: Vec<(&str, Value)> =
        vec![("response.created", json!({"response": started})), ("response.in_progress", json!({"response": started}))];
    match call {
        Some(call) => {
            let mut added = item.clone();
            added["arguments"] = json!("");
            added["status"] = json!("in_progress");
            events.push(("response.output_item.added", json!({"output_index": 0, "item": added})));
            for part in answers::fragments(&call.arguments, 8) {
                events.push(("response.function_call_arguments.delta", json!({"item_id": item_id, "output_index": 0, "delta": part})));
            }
            events.push((
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "name": call.name, "arguments": call.arguments}),
            ));
        }
        None => {
            let added = json!({"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []});
            events.push(("response.output_item.added", json!({"output_index": 0, "item": added})));
            let part = json!({"type": "output_text", "text": "", "annotations": []});
            events.push(("response.content_part.added", json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part})));
            for t in tokens {
                events.push((
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": t, "logprobs": []}),
                ));
            }
            let text = tokens.concat();
            events.push((
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
            ));
            events.push((
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": item["content"][0]}),
            ));
        }
    }
    events.push(("response.output_item.done", json!({"output_index": 0, "item": item})));
    events.push(("response.completed", json!({"response": done})));
    events
        .into_iter()
        .enumerate()
        .map(|(n, (name, mut data))| {
            data["type"] = json!(name);
            data["sequence_number"] = json!(n);
            format!("event: {name}\ndata: {data}\n\n")
        })
        .collect()
}

fn anthropic_prompt(body: &Map<String, Value>) -> String {
    let last_user = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| m["content"].clone());
    match last_user {
        Some(Value::String(s)) => s,
        Some(Value::Array(blocks)) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

fn anthropic_message(id: &str, model: &str, prompt: &str, tokens: &[String]) -> Value {
    json!({
        "id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": tokens.concat()}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": answers::count_tokens(prompt), "output_tokens": tokens.len()},
    })
}

/// A Messages API answer that calls `call`.
fn anthropic_tool_use(id: &str, model: &str, prompt: &str, call: &answers::ToolCall) -> Value {
    let input: Value = serde_json::from_str(&call.arguments).unwrap_or_default();
    json!({
        "id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": input}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": answers::count_tokens(prompt), "output_tokens": answers::count_tokens(&call.arguments)},
    })
}

fn anthropic_events(id: &str, model: &str, prompt: &str, tokens: &[String], call: Option<&answers::ToolCall>) -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": model, "content": [], "usage": {"input_tokens": answers::count_tokens(prompt), "output_tokens": 1}}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let (stop_reason, output_tokens) = match call {
        Some(call) => {
            let start = json!({"type": "tool_use", "id": call.id, "name": call.name, "input": {}});
            events.push(event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": start})));
            for part in answers::fragments(&call.arguments, 8) {
                let delta = json!({"type": "input_json_delta", "partial_json": part});
                events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": delta})));
            }
            ("tool_use", answers::count_tokens(&call.arguments) as usize)
        }
        None => {
            events.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for t in tokens {
                events.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
                ));
            }
            ("end_turn", tokens.len())
        }
    };
    events.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    events.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

/// `answer` (or a usage chunk) saying that `cached` of its prompt tokens
/// came from a prompt cache, as OpenAI reports it.
fn with_cached(mut answer: Value, cached: Option<u64>) -> Value {
    if let (Some(cached), Some(usage)) = (cached, answer.get_mut("usage").filter(|u| u.is_object())) {
        let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0);
        usage["prompt_tokens_details"] = serde_json::json!({"cached_tokens": cached.min(prompt)});
    }
    answer
}
