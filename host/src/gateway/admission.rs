//! Where a request meets its caller's limits and budget: the scopes it
//! counts against, and the 429 (or 503) when it may not go on.

use std::time::Duration;

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::http::Body;
use super::GatewayState;
use crate::error::GatewayError;
use crate::openai::inbound::InboundRequest;
use crate::quota::{Ask, Reason, Refusal, Scope, ScopeKind};

/// What `inbound` asks of its caller's limits and budget; `None` when
/// neither its client key nor its route has any.
pub(super) fn ask(state: &GatewayState, inbound: &InboundRequest, request_id: &str) -> Option<Ask> {
    let client = inbound.view.caller.key_name.as_deref();
    let mut scopes = Vec::new();
    if let Some(c) = client.and_then(|name| state.client(name)) {
        let limits = c.limits.unwrap_or_default();
        let budget = c.budget.filter(|b| b.any());
        if limits.any() || budget.is_some() {
            let name = format!("client `{}`", c.name);
            scopes.push(Scope { key: format!("client:{}", c.name), kind: ScopeKind::Client, name, limits, budget });
        }
    }
    if let Some((route, limits)) = state.route_limits(&inbound.model) {
        let key = format!("route:{route}:{}", client.unwrap_or("*"));
        let name = match client {
            Some(client) => format!("route `{route}` for client `{client}`"),
            None => format!("route `{route}`"),
        };
        scopes.push(Scope { key, kind: ScopeKind::Route, name, limits, budget: None });
    }
    if scopes.is_empty() {
        return None;
    }
    let view = &inbound.view;
    // Each of `n` choices may use the whole output budget.
    let choices = inbound.body.get("n").and_then(crate::openai::inbound::count).unwrap_or(1).max(1);
    let completion = u64::from(view.max_output_tokens.unwrap_or(0)).saturating_mul(choices);
    let prompt = u64::from(view.input_tokens);
    let (input_price, output_price) = state.max_prices();
    // Prices are per million tokens: tokens x price x 1000 is nano-dollars.
    let nano_usd = ((prompt as f64 * input_price + completion as f64 * output_price) * 1000.0).round() as u64;
    let config = &state.config;
    let lease = config.server.stream_max_duration() + Duration::from_millis(config.retry.total_timeout_ms) + Duration::from_secs(60);
    let id = format!("{request_id}.{:016x}", rand::random::<u64>());
    Some(Ask { id, scopes, tokens: prompt.saturating_add(completion), nano_usd, lease })
}

/// The answer to a request its limits refused: OpenAI's (or the Messages
/// API's) error JSON with `Retry-After` and the `x-ratelimit-*` headers.
pub(super) fn refusal_response(refusal: Refusal, tokens: u64, messages_api: bool) -> Response<Body> {
    let (error, retry_after, headers) = match refusal {
        Refusal::Unavailable(e) => {
            let error = GatewayError::shared_unavailable(format!("rate limits cannot be checked: {}", e.client_text()));
            (error, Some(Duration::from_secs(1)), Default::default())
        }
        Refusal::Limit(refused, scope) => {
            let on = &scope.name;
            let wait = refused.retry_after.map(|d| format!(" Try again in {}.", crate::quota::duration_text(d.as_secs_f64())));
            let wait = wait.unwrap_or_default();
            let l = scope.limits;
            let error = match refused.reason {
                Reason::Requests => GatewayError::rate_limited(
                    "requests",
                    format!("Rate limit reached for requests per minute on {on}: limit {}.{wait}", l.rpm.unwrap_or(0)),
                    true,
                ),
                Reason::Tokens => GatewayError::rate_limited(
                    "tokens",
                    format!(
                        "Rate limit reached for tokens per minute on {on}: limit {}, this request reserves {tokens} (prompt estimate plus max_tokens).{wait}",
                        l.tpm.unwrap_or(0)
                    ),
                    true,
                ),
                Reason::TooLarge => GatewayError::rate_limited(
                    "tokens",
                    format!(
                        "Request too large for tokens per minute on {on}: it reserves {tokens} tokens (prompt estimate plus max_tokens), the limit is {}; send less or lower max_tokens.",
                        l.tpm.unwrap_or(0)
                    ),
                    false,
                ),
                Reason::Concurrency => GatewayError::rate_limited(
                    "requests",
                    format!("Too many requests in flight on {on}: limit {}.{wait}", l.concurrency.unwrap_or(0)),
                    true,
                ),
                Reason::Budget => {
                    let b = scope.budget.unwrap_or_default();
                    let budgets: Vec<String> = [(b.daily_usd, "a day"), (b.monthly_usd, "a month")]
                        .into_iter()
                        .filter_map(|(usd, per)| usd.map(|usd| format!("${usd} {per}")))
                        .collect();
                    GatewayError::insufficient_quota(format!(
                        "You exceeded your current quota: the spend budget of {on} ({}) is used up.",
                        budgets.join(", ")
                    ))
                }
            };
            (error, refused.retry_after, refused.headers)
        }
    };
    let mut response = if messages_api { super::http::messages_error_response(&error) } else { super::http::error_response(&error) };
    let h = response.headers_mut();
    headers.write(h);
    if let Some(wait) = retry_after.filter(|_| error.status != StatusCode::TOO_MANY_REQUESTS || error.retryable) {
        // Whole seconds for `Retry-After`, milliseconds for the SDKs that read `retry-after-ms`.
        h.insert(RETRY_AFTER, HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64));
        h.insert("retry-after-ms", HeaderValue::from(wait.as_millis().max(1) as u64));
    }
    response
}
