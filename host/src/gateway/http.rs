//! Where a request is read, authenticated and answered: request ids, client
//! keys, body limits, dispatch by path, and the response headers that say
//! what happened.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};

use serde_json::{json, Value};

use super::admission;
use super::attempts::{self, Finished, Outcome};
use super::cached::{self, CacheWrite};
use super::candidates::{self, CanaryWatch, ShadowRun};
use super::framing::Framing;
use super::outcome::{EndHooks, Observation, QuotaEnd};
use super::plan::{self, Plan};
use super::relay::{Relay, StreamLimits};
use super::rescue::{Leg, Mode, RescueLimits, Rescuer};
use super::{Gateway, GatewayState};
use crate::cache;
use crate::config::Config;
use crate::contract::{ApiSurface, Tag};
use crate::decision_log::DecisionLog;
use crate::error::GatewayError;
use crate::metrics::{Metrics, RequestLabels};
use crate::openai::inbound::{self, CallerIdentity, InboundRequest, ParseContext, ViewLimits};
use crate::policy::Candidate;
use crate::telemetry;
use crate::upstream::AnswerShape;
use tracing::Instrument;

/// Response body: complete, or streamed.
pub type Body = UnsyncBoxBody<Bytes, StreamCut>;

/// The one error a response body has: a stream the router ended before its
/// end (its client stopped reading). hyper then resets the HTTP/2 stream or
/// closes the HTTP/1 connection, so the client cannot take the cut stream
/// for a whole one.
#[derive(Debug)]
pub struct StreamCut;

impl std::fmt::Display for StreamCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the stream was ended because its client stopped reading")
    }
}

impl std::error::Error for StreamCut {}

/// A complete response body.
pub fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never: Infallible| match never {}).boxed_unsync()
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const BACKEND: HeaderName = HeaderName::from_static("x-switchyard-backend");
const MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");
const POLICY: HeaderName = HeaderName::from_static("x-switchyard-policy");
const ATTEMPTS: HeaderName = HeaderName::from_static("x-switchyard-attempts");
const LABELS: HeaderName = HeaderName::from_static("x-switchyard-labels");
const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
const OVERHEAD: HeaderName = HeaderName::from_static("x-switchyard-overhead-ms");
const TOKEN_COUNT: HeaderName = HeaderName::from_static("x-switchyard-token-count");
const CACHE: HeaderName = HeaderName::from_static("x-switchyard-cache");

/// The API a request came in on: the shape of its answers and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ingress {
    /// The OpenAI-compatible APIs.
    OpenAi(ApiSurface),
    /// The Anthropic Messages API.
    Messages,
    /// The OpenAI Responses API.
    Responses,
}

/// Answers one request. Never fails: errors become the called API's error
/// JSON.
pub async fn handle(gateway: Arc<Gateway>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let span = telemetry::request_span(&request_id, method.as_str(), &path, request.headers());
    let mut response = match dispatch(&gateway, request, &request_id, started).instrument(span.clone()).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(%request_id, %method, %path, status = error.status.as_u16(), source = error.source.as_str(), "{}", error.message);
            let messages_api = api_path(&path).starts_with("/messages");
            if messages_api {
                messages_error_response(&error)
            } else {
                error_response(&error)
            }
        }
    };
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        // What the path takes (RFC 9110 asks a 405 to say).
        let api = api_path(&path);
        let allow = if api == "/models" || api == "/healthz" || api.starts_with("/models/") { "GET" } else { "POST" };
        response.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    telemetry::record_status(&span, response.status().as_u16());
    response
}

async fn dispatch(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    request_id: &str,
    started: Instant,
) -> Result<Response<Body>, GatewayError> {
    // HTTP/1 never gets here with more (hyper answers 431); HTTP/2 does.
    let max_headers = gateway.max_headers();
    if request.headers().len() > max_headers {
        return Err(GatewayError::too_many_headers(max_headers));
    }
    let full_path = request.uri().path();
    let path = api_path(full_path);
    let surface = match path {
        "/chat/completions" => Some(Ingress::OpenAi(ApiSurface::Chat)),
        "/completions" => Some(Ingress::OpenAi(ApiSurface::Completion)),
        "/embeddings" => Some(Ingress::OpenAi(ApiSurface::Embeddings)),
        "/messages" => Some(Ingress::Messages),
        "/responses" => Some(Ingress::Responses),
        _ => None,
    };
    let method = request.method();
    let model_id = path.strip_prefix("/models/").filter(|id| !id.is_empty());
    match (surface, path, model_id) {
        (Some(ingress), _, _) if method == Method::POST => proxy(gateway, request, ingress, request_id, started).await,
        (None, "/messages/count_tokens", _) if method == Method::POST => count_tokens(gateway, request, request_id).await,
        (None, "/models", _) if method == Method::GET => {
            let state = gateway.state();
            authenticate(&state, request.headers())?;
            Ok(json_response(StatusCode::OK, state.models.clone()))
        }
        (None, _, Some(id)) if method == Method::GET => {
            let state = gateway.state();
            authenticate(&state, request.headers())?;
            let model = state.model(id).ok_or_else(|| GatewayError::model_not_found(id))?;
            Ok(json_response(StatusCode::OK, Bytes::from(model.to_string())))
        }
        (None, "/healthz", _) if method == Method::GET => Ok(json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))),
        (Some(_), _, _) | (None, "/models" | "/healthz" | "/messages/count_tokens", _) | (None, _, Some(_)) => {
            Err(GatewayError::method_not_allowed(method.as_str(), full_path))
        }
        (None, _, None) => Err(GatewayError::unknown_url(method.as_str(), full_path)),
    }
}

/// The path without `/v1`: clients configured with a bare host (no `/v1`)
/// reach the same endpoints.
fn api_path(full_path: &str) -> &str {
    full_path.strip_prefix("/v1").filter(|p| p.starts_with('/')).unwrap_or(full_path)
}

/// Authenticates, reads and parses a request to be routed (`count_only`:
/// a Messages API token count, which has no `max_tokens`).
async fn read_request(
    state: &GatewayState,
    request: Request<Incoming>,
    ingress: Ingress,
    request_id: &str,
    count_only: bool,
) -> Result<InboundRequest, GatewayError> {
    let caller = authenticate(state, request.headers())?;
    let (parts, body) = request.into_parts();
    let body = read_body(body, &parts.headers, state.config.server.max_body_bytes, state.config.server.body_timeout()).await?;
    let limits = ViewLimits { text_bytes: state.config.policies.text_budget_bytes, messages: state.config.policies.view_max_messages };
    let cx = ParseContext { headers: &parts.headers, caller: &caller, request_id, limits, seed: rand::random(), api: None };
    match ingress {
        Ingress::OpenAi(surface) => inbound::parse(surface, &body, cx),
        Ingress::Messages => crate::anthropic::inbound::parse(&body, cx, count_only),
        Ingress::Responses => crate::responses::inbound::parse(&body, cx),
    }
}

async fn proxy(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    ingress: Ingress,
    request_id: &str,
    started: Instant,
) -> Result<Response<Body>, GatewayError> {
    let state = gateway.state();
    let cache_control = request.headers().get(CACHE_CONTROL).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut inbound = read_request(&state, request, ingress, request_id, false).await?;
    let messages_api = ingress == Ingress::Messages;
    let metrics = gateway.metrics();
    // The route's cache, as far as the client has a say (the policy's comes after it decides).
    let cache_plan =
        state.route_cache(&inbound.model).map(|config| cache::plan(&config, &inbound.model, &inbound, cache_control.as_deref()));
    let readable = match &cache_plan {
        Some(Ok(p)) if p.read => Some(p.key),
        _ => None,
    };
    let mut cached_entry = readable.and_then(|key| gateway.cache().local(&key));
    // A shared store's copy is read in the admission's round trip, when there is one.
    let mut lookup = readable.filter(|_| cached_entry.is_none()).and_then(|key| gateway.cache().shared_lookup(&key));
    // The caller's limits and budget, before the policy (which sees the budget used).
    let ticket = match admission::ask(&state, &inbound, request_id) {
        Some(ask) => {
            let tokens = ask.tokens;
            let (verdict, replies) = gateway.quotas().admit(ask, lookup.take().unwrap_or_default()).await;
            if let (Some(key), Some(replies)) = (readable, replies.filter(|r| !r.is_empty())) {
                cached_entry = gateway.cache().shared_entry(&key, replies);
            }
            match verdict {
                Ok(ticket) => Some(ticket),
                Err(refusal) => {
                    let response = admission::refusal_response(refusal, tokens, messages_api);
                    let status = response.status();
                    tracing::info!(%request_id, model = %inbound.model, status = status.as_u16(), "refused by the caller's limits");
                    let labels = RequestLabels {
                        model: state.model_label(&inbound.model).to_owned(),
                        backend: "none".into(),
                        policy: "limits".into(),
                        status: status.as_u16(),
                        arm: String::new(),
                    };
                    metrics.request(labels, started.elapsed(), started.elapsed());
                    return Ok(response);
                }
            }
        }
        None => None,
    };
    let rate_headers = ticket.as_ref().map(|t| t.admitted().headers);
    if let Some(used) = ticket.as_ref().and_then(|t| t.admitted().budget_used) {
        let tag = Tag { key: inbound::BUDGET_USED_TAG.to_owned(), value: format!("{used:.2}") };
        Arc::make_mut(&mut inbound.view).tags.push(tag);
    }
    let inbound = Arc::new(inbound);
    let plan = match plan::plan(&state, gateway.registry(), metrics, gateway.candidates(), &inbound).await {
        Ok(plan) => plan,
        Err(error) => {
            // No route for it: nothing was used, and the caller still learns its limits.
            if let Some(ticket) = ticket {
                ticket.settle(Some(crate::quota::Use { tokens: 0, nano_usd: 0 }));
            }
            tracing::info!(%request_id, model = %inbound.model, status = error.status.as_u16(), source = error.source.as_str(), "{}", error.message);
            let mut response = if messages_api { messages_error_response(&error) } else { error_response(&error) };
            if let Some(rate) = &rate_headers {
                rate.write(response.headers_mut());
            }
            return Ok(response);
        }
    };
    if let Some(shadow) = plan.instance.as_ref().and_then(|i| gateway.registry().get(&Candidate::Shadow.name_for(i))) {
        let run =
            ShadowRun { shadow, metrics: metrics.clone(), log: gateway.decision_log().cloned(), candidates: gateway.candidates().clone() };
        candidates::shadow(run, &plan, &inbound);
    }
    let cache_plan = match cache_plan {
        _ if plan.refusal.is_some() => None,
        Some(Ok(_)) if cache::policy_skips(&plan.labels) => Some(Err(cache::Skip::Policy)),
        other => other,
    };
    if let Some(Ok(cp)) = cache_plan.as_ref().filter(|p| matches!(p, Ok(p) if p.read)) {
        // Not read in the admission's round trip (the caller has no limits): read now.
        if lookup.is_some() {
            cached_entry = gateway.cache().get(&cp.key).await;
        }
        // A stream that asks for usage is not replayed from an answer that has none.
        if let Some(entry) = cached_entry.take().filter(|e| !(inbound.stream && inbound.include_usage && e.usage.is_none())) {
            let hit = Hit { plan: &plan, inbound: &inbound, entry: &entry, ticket, rate_headers, started, request_id };
            return answer_hit(gateway, &state, hit);
        }
    }
    let cache_status = cache_plan.as_ref().map(|p| match p {
        Ok(p) if p.read => "miss",
        _ => "skip",
    });
    if let Some(status) = cache_status {
        metrics.cache(status);
    }
    let cache_write = match &cache_plan {
        Some(Ok(p)) if p.write => Some(*p),
        _ => None,
    };
    let finished = match &plan.refusal {
        Some(refusal) => Finished::without_attempts(refusal.clone()),
        None => attempts::run(&state.config, metrics, &plan, &inbound, request_id, started).await,
    };

    let mut usage = None;
    let mut error_message = None;
    let answered = match &finished.outcome {
        Outcome::Complete { upstream, .. } | Outcome::Stream { upstream, .. } | Outcome::Refused { upstream, .. } => Some(upstream),
        Outcome::Failed(_) => None,
    };
    let mut observation = Observation::start(&plan, &inbound, answered, &finished.failed, started);
    let answered_prices = answered.map(|u| (u.config.input_price, u.config.output_price));
    // An upstream's refusal (a 4xx passed on) used nothing of the caller's limits.
    let paid_by = match &finished.outcome {
        Outcome::Complete { upstream, .. } | Outcome::Stream { upstream, .. } => Some(upstream.clone()),
        Outcome::Refused { .. } | Outcome::Failed(_) => None,
    };
    let mut cached = 0;
    let canary = CanaryWatch::start(gateway, &plan, answered_prices, started);
    let (mut response, backend, model, relay) = match finished.outcome {
        Outcome::Complete { upstream, model, answer } => {
            usage = answer.usage;
            let keep = cache_write.filter(|p| {
                answer.shape == AnswerShape::Chat
                    && answer.body.len() <= p.config.max_entry_bytes
                    && answer.finished.unwrap_or_else(|| cache::replay::finished(&answer.body))
            });
            if let Some((input, output)) = answer.usage {
                // Cache reads are read from the body only when the backend prices them apart.
                if upstream.config.cached_input_price.is_some() {
                    cached = crate::openai::cached_tokens(&answer.body);
                }
                metrics.tokens(upstream.name(), input, output, upstream.config.cost_usd(input, output, cached));
            }
            let response = match (ingress, answer.shape) {
                (Ingress::Messages, AnswerShape::Chat) => match messages_answer(&answer.body) {
                    Ok(body) => json_response(StatusCode::OK, body),
                    Err(error) => {
                        let response = messages_error_response(&error);
                        error_message = Some(error.message);
                        response
                    }
                },
                (Ingress::Responses, AnswerShape::Chat) => match responses_answer(&answer.body, &inbound) {
                    Ok(body) => json_response(StatusCode::OK, body),
                    Err(error) => {
                        let response = error_response(&error);
                        error_message = Some(error.message);
                        response
                    }
                },
                _ => json_response(StatusCode::OK, answer.body.clone()),
            };
            // Kept only when the client's own shape of it could be made.
            if let Some(p) = keep.filter(|_| error_message.is_none()) {
                gateway.cache().put(p.key, cache::Entry::new(answer.body, vec![], upstream.name().to_owned(), usage, p.config.ttl()));
            }
            (response, Some(upstream.name().to_owned()), Some(model), None)
        }
        Outcome::Stream { upstream, model, first, rest, attempt, next } => {
            if let Some(o) = observation.as_mut() {
                o.first_byte(started.elapsed());
            }
            let name = upstream.name().to_owned();
            let config = &state.config;
            let limits =
                StreamLimits { write_timeout: config.server.stream_write_timeout(), max_duration: config.server.stream_max_duration() };
            let leg = Leg { upstream, attempt, first, rest, mode: Mode::Original };
            let rescuer = rescuer(config, &plan, next, finished.attempts, &inbound, request_id, metrics);
            let mut relay = Relay::new(leg, limits, inbound.include_usage, rescuer, Framing::of(&inbound));
            relay.keep_in(cache_write.map(|p| CacheWrite::new(gateway.cache().clone(), p.key, p.config.ttl(), p.config.max_entry_bytes)));
            // The body is set when the relay starts, below.
            (sse_response(), Some(name), Some(model), Some(relay))
        }
        Outcome::Refused { upstream, status, body } => {
            let body = if messages_api { crate::anthropic::answer::upstream_error(status.as_u16(), &body) } else { body };
            (json_response(status, body), Some(upstream.name().to_owned()), None, None)
        }
        Outcome::Failed(error) => {
            let response = if messages_api { messages_error_response(&error) } else { error_response(&error) };
            error_message = Some(error.message);
            (response, None, None, None)
        }
    };

    let status = response.status();
    let quota = ticket.map(|ticket| QuotaEnd { ticket, answered: paid_by });
    let hooks = EndHooks { observation: observation.map(Box::new), canary: canary.map(Box::new), quota: quota.map(Box::new) };
    let headers = response.headers_mut();
    if let Some(rate) = &rate_headers {
        rate.write(headers);
    }
    if let Some(status) = cache_status {
        headers.insert(CACHE, HeaderValue::from_static(status));
    }
    for (name, value) in [(BACKEND, backend.as_deref()), (MODEL, model.as_deref()), (POLICY, Some(plan.policy.as_str()))] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    headers.insert(ATTEMPTS, HeaderValue::from(finished.attempts));
    if !plan.labels.is_empty() {
        let labels: Vec<String> = plan.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Ok(v) = HeaderValue::from_str(&labels.join(",")) {
            headers.insert(LABELS, v);
        }
    }
    if !status.is_success() && !finished.failures.is_empty() {
        // The router already failed over; client retries would multiply attempts.
        headers.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
    }
    let total = started.elapsed();
    let overhead = total.saturating_sub(finished.upstream_wait);
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0)) {
        headers.insert(OVERHEAD, v);
    }
    let arm = plan.labels.iter().find(|(k, _)| k == "arm").map_or_else(String::new, |(_, v)| v.clone());
    let policy = plan.policy.split('@').next().unwrap_or_default().to_owned();
    let record = gateway.decision_log().map(|log| {
        let end = RequestEnd {
            attempts: finished.attempts,
            failures: &finished.failures,
            error: error_message.as_deref(),
            backend: backend.as_deref(),
            model: model.as_deref(),
            status,
            total,
            overhead,
        };
        let mut record = decision_record(log, &plan, &inbound, end);
        if let Some(status) = cache_status {
            record["cache"] = json!(status);
        }
        // Always logged, whatever the sample rate: what went wrong or took a detour.
        let notable = !status.is_success()
            || plan.policy_error.is_some()
            || plan.refusal.is_some()
            || !plan.gone.is_empty()
            || finished.attempts > 1
            || !finished.failures.is_empty();
        (log.clone(), record, notable)
    });
    match (relay, record) {
        // A stream's record is written when the stream ends, with its tokens.
        (Some(relay), record) => {
            *response.body_mut() = relay.start(gateway.stalls(), metrics.clone(), request_id.to_owned(), record, hooks).boxed_unsync();
        }
        (None, record) => {
            if let Some((log, mut record, notable)) = record {
                record["tokens"] = crate::decision_log::tokens_json(usage);
                log.write_sampled(record, notable);
            }
            hooks.finish(status.as_u16(), usage, cached, false);
        }
    }
    if telemetry::enabled() {
        let span = tracing::Span::current();
        telemetry::record_request(&span, &inbound.model, &plan.policy, backend.as_deref(), model.as_deref(), finished.attempts);
    }
    let backend_label = backend.clone().unwrap_or_else(|| "none".into());
    metrics.request(
        RequestLabels { model: state.model_label(&inbound.model).to_owned(), backend: backend_label, policy, status: status.as_u16(), arm },
        total,
        overhead,
    );
    tracing::info!(
        %request_id, model = %inbound.model, policy = %plan.policy, backend = backend.as_deref().unwrap_or("-"),
        attempts = finished.attempts, status = status.as_u16(), stream = inbound.stream,
        ms = millis(started.elapsed()), "request"
    );
    Ok(response)
}

/// A request answered from the response cache.
struct Hit<'a> {
    plan: &'a Plan,
    inbound: &'a Arc<InboundRequest>,
    entry: &'a cache::Entry,
    ticket: Option<crate::quota::Ticket>,
    rate_headers: Option<crate::quota::RateHeaders>,
    started: Instant,
    request_id: &'a str,
}

/// Answers from the cache: no upstream call, nothing spent (the
/// reservation settles at zero); counted, logged and observed as a hit.
fn answer_hit(gateway: &Arc<Gateway>, state: &GatewayState, hit: Hit<'_>) -> Result<Response<Body>, GatewayError> {
    let Hit { plan, inbound, entry, ticket, rate_headers, started, request_id } = hit;
    let metrics = gateway.metrics();
    metrics.cache("hit");
    // Nothing was used, whatever comes of the replay.
    if let Some(ticket) = ticket {
        ticket.settle(Some(crate::quota::Use { tokens: 0, nano_usd: 0 }));
    }
    let mut response = cached::answer(entry, inbound)?;
    let status = response.status();
    let headers = response.headers_mut();
    headers.insert(CACHE, HeaderValue::from_static("hit"));
    headers.insert(POLICY, HeaderValue::from_str(&plan.policy).unwrap_or(HeaderValue::from_static("-")));
    if let Ok(v) = HeaderValue::from_str(&entry.backend) {
        headers.insert(BACKEND, v);
    }
    headers.insert(ATTEMPTS, HeaderValue::from(0));
    if let Some(rate) = &rate_headers {
        rate.write(headers);
    }
    let total = started.elapsed();
    let usage = entry.usage;
    if let Some(mut o) = Observation::start(plan, inbound, None, &[], started) {
        o.cache_hit();
        o.finish(status.as_u16(), usage, 0, false);
    }
    if let Some(log) = gateway.decision_log() {
        let end = RequestEnd {
            attempts: 0,
            failures: &[],
            error: None,
            backend: Some(&entry.backend),
            model: None,
            status,
            total,
            overhead: total,
        };
        let mut record = decision_record(log, plan, inbound, end);
        record["cache"] = json!("hit");
        record["tokens"] = crate::decision_log::tokens_json(usage);
        log.write_sampled(record, false);
    }
    let policy = plan.policy.split('@').next().unwrap_or_default().to_owned();
    let arm = plan.labels.iter().find(|(k, _)| k == "arm").map_or_else(String::new, |(_, v)| v.clone());
    let labels = RequestLabels {
        model: state.model_label(&inbound.model).to_owned(),
        backend: "cache".into(),
        policy,
        status: status.as_u16(),
        arm,
    };
    metrics.request(labels, total, total);
    tracing::info!(%request_id, model = %inbound.model, policy = %plan.policy, cache = "hit", status = status.as_u16(), stream = inbound.stream, "request");
    Ok(response)
}

/// An OpenAI chat completion as a Messages API answer.
pub(super) fn messages_answer(completion: &[u8]) -> Result<Bytes, GatewayError> {
    let invalid = |why: String| GatewayError::upstream(StatusCode::BAD_GATEWAY, "invalid_answer", why);
    let completion: Value = serde_json::from_slice(completion).map_err(|e| invalid(format!("the upstream's answer is not JSON: {e}")))?;
    let message = crate::anthropic::answer::message_from_completion(&completion).map_err(invalid)?;
    Ok(Bytes::from(message.to_string()))
}

/// An OpenAI chat completion as a Responses API `response`.
pub(super) fn responses_answer(completion: &[u8], inbound: &InboundRequest) -> Result<Bytes, GatewayError> {
    let completion: Value = serde_json::from_slice(completion).map_err(|e| {
        GatewayError::upstream(StatusCode::BAD_GATEWAY, "invalid_answer", format!("the upstream's answer is not JSON: {e}"))
    })?;
    let request = inbound.native.as_ref().map(|n| n.json_with_model(&inbound.model)).unwrap_or_default();
    let created = crate::mock_answers::unix_now();
    let response = crate::responses::answer::response_from_completion(&completion, crate::responses::answer::skeleton(&request, created));
    Ok(Bytes::from(response.to_string()))
}

/// `POST /v1/messages/count_tokens`: the policy decides as for the message
/// itself; the first Anthropic backend among its targets counts, else the
/// router estimates (and says so in `x-switchyard-token-count: estimate`).
async fn count_tokens(gateway: &Arc<Gateway>, request: Request<Incoming>, request_id: &str) -> Result<Response<Body>, GatewayError> {
    let state = gateway.state();
    let inbound = read_request(&state, request, Ingress::Messages, request_id, true).await?;
    let plan = plan::plan(&state, gateway.registry(), gateway.metrics(), gateway.candidates(), &inbound).await?;
    if let Some(refusal) = plan.refusal {
        return Err(refusal);
    }
    for target in &plan.targets {
        match target.upstream.count_tokens(&inbound, &target.model, request_id).await {
            None => continue,
            Some(Ok(answer)) => {
                let mut response = json_response(StatusCode::OK, answer.body);
                response.headers_mut().insert(TOKEN_COUNT, HeaderValue::from_static("upstream"));
                if let Ok(v) = HeaderValue::from_str(target.upstream.name()) {
                    response.headers_mut().insert(BACKEND, v);
                }
                return Ok(response);
            }
            // The request's own fault (auth, a bad field) is the client's to see, not estimated over.
            Some(Err(crate::upstream::AttemptFailure::Status { status, body, .. }))
                if (400..500).contains(&status) && status != 408 && status != 429 =>
            {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                return Ok(json_response(status, crate::anthropic::answer::upstream_error(status.as_u16(), &body)));
            }
            Some(Err(failure)) => {
                tracing::info!(%request_id, backend = target.upstream.name(), "count_tokens failed: {}", failure.describe());
            }
        }
    }
    let body = json!({"input_tokens": inbound.view.input_tokens});
    let mut response = json_response(StatusCode::OK, Bytes::from(body.to_string()));
    response.headers_mut().insert(TOKEN_COUNT, HeaderValue::from_static("estimate"));
    Ok(response)
}

/// What may rescue a stream: the plan's targets after `next`, when the
/// route rescues streams and any are left (chat streams only).
fn rescuer(
    config: &Config,
    plan: &Plan,
    next: usize,
    attempts: u32,
    inbound: &Arc<InboundRequest>,
    request_id: &str,
    metrics: &Arc<Metrics>,
) -> Option<Rescuer> {
    let targets = plan.targets.get(next..).filter(|t| !t.is_empty())?;
    if !plan.rescue || inbound.surface != ApiSurface::Chat {
        return None;
    }
    let limits = RescueLimits {
        attempts_left: config.retry.max_attempts.saturating_sub(attempts),
        max_rescues: config.rescue.max_rescues,
        budget: std::time::Duration::from_millis(config.retry.total_timeout_ms),
    };
    Some(Rescuer::new(inbound.clone(), request_id, targets.to_vec(), limits, metrics.clone()))
}

/// What a request came to, for its decision-log record.
struct RequestEnd<'a> {
    attempts: u32,
    failures: &'a [String],
    /// The router's error message, when no upstream answered.
    error: Option<&'a str>,
    backend: Option<&'a str>,
    model: Option<&'a str>,
    status: StatusCode,
    total: std::time::Duration,
    overhead: std::time::Duration,
}

/// The decision-log record of a request: what the policy saw and decided,
/// and what came of it (tokens are added by the caller).
fn decision_record(log: &DecisionLog, plan: &Plan, inbound: &InboundRequest, w: RequestEnd<'_>) -> Value {
    let seen = plan.seen.as_ref().map(|(version, stats)| {
        let names: Vec<String> = version.backends().iter().map(|b| b.name.clone()).collect();
        crate::contract::json::stats_json(&names, stats)
    });
    let mut decision = match &plan.refusal {
        Some(refusal) => json!({"reject": {"status": refusal.status.as_u16(), "message": refusal.message}}),
        None => {
            let targets: Vec<Value> = plan.targets.iter().map(|t| json!({"backend": t.upstream.name(), "model": t.model})).collect();
            let labels: serde_json::Map<String, Value> = plan.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            json!({"targets": targets, "labels": labels})
        }
    };
    if !plan.gone.is_empty() {
        // Chosen by the policy, skipped: this configuration no longer has them.
        decision["gone"] = json!(plan.gone);
    }
    if let Some(e) = &plan.policy_error {
        // The targets or the rejection above are then the route's, not the policy's.
        decision["policy_error"] = json!({"kind": e.kind().as_str(), "message": e.message()});
    }
    json!({
        "ts_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "request_id": inbound.view.id, "policy": plan.policy, "seed": inbound.view.seed,
        "request": log.request_json(&inbound.view), "backends": seen, "decision": decision,
        "attempts": w.attempts, "failures": w.failures, "error": w.error, "backend": w.backend, "model": w.model,
        "status": w.status.as_u16(), "latency_ms": millis(w.total), "overhead_ms": millis(w.overhead),
    })
}

/// Milliseconds to the microsecond, as logs print them (`0.445`, not
/// `0.44538500000000003`).
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The client key's name, or 401; with no keys configured, anyone may call.
fn authenticate(state: &GatewayState, headers: &HeaderMap) -> Result<CallerIdentity, GatewayError> {
    if state.clients.is_empty() {
        return Ok(CallerIdentity::default());
    }
    let bearer =
        headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    let key =
        bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)).ok_or_else(GatewayError::unauthorized)?;
    state
        .clients
        .iter()
        .find(|c| constant_time_eq(c.key.as_bytes(), key.as_bytes()))
        .map(|c| CallerIdentity { key_name: Some(c.name.clone()) })
        .ok_or_else(GatewayError::unauthorized)
}

/// Compares secrets in time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_body(body: Incoming, headers: &HeaderMap, limit: usize, timeout: std::time::Duration) -> Result<Bytes, GatewayError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::too_large(limit));
    }
    let Ok(collected) = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await else {
        return Err(GatewayError::body_timeout(timeout));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(GatewayError::too_large(limit)),
        Err(e) => Err(GatewayError::bad_request(format!("could not read the request body: {e}"), None)),
    }
}

/// The client's `x-request-id` when it is short and printable, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_owned)
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The OpenAI-style error response for `error`.
pub fn error_response(error: &GatewayError) -> Response<Body> {
    let mut response = json_response(error.status, error.body());
    if !error.retryable {
        response.headers_mut().insert(SHOULD_RETRY, HeaderValue::from_static("false"));
    }
    response
}

/// The Messages API's error response for `error`.
pub(super) fn messages_error_response(error: &GatewayError) -> Response<Body> {
    let mut response = json_response(error.status, Bytes::from(crate::anthropic::answer::error_json(error).to_string()));
    if !error.retryable {
        response.headers_mut().insert(SHOULD_RETRY, HeaderValue::from_static("false"));
    }
    response
}

/// The head of an SSE response; its body is set when the relay starts
/// (`Relay::start`).
fn sse_response() -> Response<Body> {
    let mut response = Response::new(Body::default());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
