//! Where an upstream is tried and a failure is retried: the decision's
//! targets in order, within the attempt and time budgets, until one answers.
//! Nothing has reached the client while this runs, so every failure here can
//! still be rescued.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::StatusCode;

use super::plan::{Plan, Target};
use super::transcript::ChunkView;
use crate::config::{Config, RetryConfig};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::openai::inbound::InboundRequest;
use crate::openai::sse::SseEvent;
use crate::stats::{InFlight, LiveStats};
use crate::telemetry;
use crate::upstream::{Answer, AttemptFailure, Call, EventStream, Reply, Upstream};
use tracing::Instrument;

/// One attempt's claim on a backend's stats: in flight until dropped, and
/// settled as a success or a failure exactly once.
pub(super) struct Attempt {
    stats: Arc<LiveStats>,
    _in_flight: InFlight,
    started: Instant,
    settled: bool,
}

impl Attempt {
    /// Claims a place in flight on the backend of `stats`.
    pub(super) fn new(stats: &Arc<LiveStats>) -> Self {
        Self { _in_flight: stats.start(), stats: stats.clone(), started: Instant::now(), settled: false }
    }

    /// The answer completed.
    pub(super) fn succeed(mut self) {
        self.stats.record_success(self.started.elapsed());
        self.settled = true;
    }

    /// The backend failed.
    pub(super) fn fail(mut self) {
        self.stats.record_failure();
        self.settled = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.stats.release_probe();
        }
    }
}

/// How a request ended up.
pub(super) enum Outcome {
    /// A complete answer.
    Complete { upstream: Arc<Upstream>, model: String, answer: Answer },
    /// A stream whose first event has arrived; `next` is the index of the
    /// first target not tried, where a rescue would start.
    Stream { upstream: Arc<Upstream>, model: String, first: SseEvent, rest: EventStream, attempt: Attempt, next: usize },
    /// An upstream refused the request in a way no other target would fix
    /// (a 4xx such as a content-policy refusal): its error goes to the client.
    Refused { upstream: Arc<Upstream>, status: StatusCode, body: Bytes },
    /// No target could answer.
    Failed(GatewayError),
}

/// The outcome and what it took.
pub(super) struct Finished {
    pub outcome: Outcome,
    /// Upstream calls made.
    pub attempts: u32,
    /// `backend: what went wrong`, for each failed or skipped target.
    pub failures: Vec<String>,
    /// The upstream calls that failed, for the policy's `observe`.
    pub failed: Vec<crate::contract::FailedAttempt>,
    /// Time spent waiting on upstreams (and on their `Retry-After`): the
    /// rest of a request's time is the router's own overhead.
    pub upstream_wait: Duration,
}

impl Finished {
    /// No upstream was called (the policy refused the request).
    pub(super) fn without_attempts(error: GatewayError) -> Self {
        Self { outcome: Outcome::Failed(error), attempts: 0, failures: Vec::new(), failed: Vec::new(), upstream_wait: Duration::ZERO }
    }
}

enum Success {
    Complete(Answer),
    Stream(SseEvent, EventStream),
}

/// Tries the plan's targets in order.
pub(super) async fn run(
    config: &Config,
    metrics: &Metrics,
    plan: &Plan,
    inbound: &InboundRequest,
    request_id: &str,
    started: Instant,
) -> Finished {
    let deadline = started + Duration::from_millis(config.retry.total_timeout_ms);
    let max_attempts = config.retry.max_attempts;
    let mut attempts = 0u32;
    let mut failures = Vec::new();
    let mut last: Option<(&Arc<Upstream>, AttemptFailure)> = None;
    // Models that refused the request in a way that would repeat (context length).
    let mut refused_models: Vec<&str> = Vec::new();
    let mut upstream_wait = Duration::ZERO;
    let mut failed = Vec::new();
    // Targets that can never serve the request (its API, or what only its own API carries).
    let mut unsupported = 0usize;
    let finish = |outcome, attempts, failures, failed, upstream_wait| Finished { outcome, attempts, failures, failed, upstream_wait };

    'targets: for (i, target) in plan.targets.iter().enumerate() {
        let upstream = &target.upstream;
        if attempts >= max_attempts {
            break;
        }
        if let Some(why) = upstream.cannot_serve(inbound) {
            failures.push(format!("{}: {why}", upstream.name()));
            unsupported += 1;
            continue;
        }
        if refused_models.contains(&target.model.as_str()) {
            continue;
        }
        if !upstream.stats.admit() {
            failures.push(format!("{}: circuit open", upstream.name()));
            continue;
        }
        let is_last = i + 1 == plan.targets.len();
        let mut retries = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                failures.push("the request's time budget ran out".into());
                last = Some((upstream, AttemptFailure::Timeout("request budget")));
                break 'targets;
            }
            attempts += 1;
            let attempt = Attempt::new(&upstream.stats);
            let span = telemetry::attempt_span(upstream.name(), &target.model);
            let result = try_target(target, inbound, request_id, remaining).instrument(span.clone()).await;
            telemetry::record_outcome(&span, result.as_ref().map_or_else(AttemptFailure::outcome, |_| "ok"));
            upstream_wait += attempt.started.elapsed();
            if result.is_ok() && i > 0 {
                metrics.fallback();
            }
            let failure = match result {
                Ok(Success::Complete(answer)) => {
                    metrics.attempt(upstream.name(), "ok");
                    attempt.succeed();
                    let outcome = Outcome::Complete { upstream: upstream.clone(), model: target.model.clone(), answer };
                    return finish(outcome, attempts, failures, failed, upstream_wait);
                }
                Ok(Success::Stream(first, rest)) => {
                    metrics.attempt(upstream.name(), "ok");
                    metrics.first_token(upstream.name(), attempt.started.elapsed());
                    upstream.stats.record_first_token(attempt.started.elapsed());
                    let outcome =
                        Outcome::Stream { upstream: upstream.clone(), model: target.model.clone(), first, rest, attempt, next: i + 1 };
                    return finish(outcome, attempts, failures, failed, upstream_wait);
                }
                Err(failure) => failure,
            };
            metrics.attempt(upstream.name(), failure.outcome());
            if failure.counts_against_backend() {
                attempt.fail();
            }
            tracing::info!(request_id, backend = upstream.name(), model = %target.model, "attempt failed: {}", failure.describe());
            failures.push(format!("{}: {}", upstream.name(), failure.describe()));
            failed.push(crate::contract::FailedAttempt {
                backend: upstream.name().to_owned(),
                kind: failure.outcome().to_owned(),
                status: match &failure {
                    AttemptFailure::Status { status, .. } => Some(*status),
                    _ => None,
                },
            });
            if !failure.retryable() {
                if is_context_length(&failure) {
                    // Another model may have a larger context; this one never will.
                    refused_models.push(&target.model);
                    last = Some((upstream, failure));
                    break;
                }
                return finish(refused(upstream, failure), attempts, failures, failed, upstream_wait);
            }
            let wait = retry_wait(&failure, &config.retry, retries);
            // The last target is retried while the budgets allow; an earlier
            // one, which has a fallback, `retry.same_backend` times after a
            // transient failure.
            let retry = is_last || (failure.transient() && retries < config.retry.same_backend);
            last = Some((upstream, failure));
            match wait {
                Some(wait)
                    if retry
                        && attempts < max_attempts
                        && wait < deadline.saturating_duration_since(Instant::now())
                        && upstream.stats.circuit_state() != crate::contract::CircuitState::Open =>
                {
                    tokio::time::sleep(wait).await;
                    upstream_wait += wait;
                    retries += 1;
                }
                _ => break,
            }
        }
    }
    let outcome = match last {
        // The refusal is the client's to see when no larger model was left.
        Some((upstream, failure)) if is_context_length(&failure) => refused(upstream, failure),
        // No target can ever serve it: the request's fault, not a passing failure.
        None if unsupported == plan.targets.len() && unsupported > 0 => Outcome::Failed(GatewayError::bad_request(
            format!("no backend this request may go to can serve it ({})", failures.join("; ")),
            Some("model"),
        )),
        last => Outcome::Failed(no_answer(last.as_ref().map(|(_, failure)| failure), attempts, &failures)),
    };
    finish(outcome, attempts, failures, failed, upstream_wait)
}

/// How long to wait before retrying a target after `failure`, or `None`
/// when it is not worth retrying: its `Retry-After` when that is short,
/// else an exponential backoff with jitter; never after a timeout, which
/// already spent its time.
fn retry_wait(failure: &AttemptFailure, retry: &RetryConfig, retries: u32) -> Option<Duration> {
    match failure {
        AttemptFailure::Status { retry_after: Some(wait), .. } => {
            (*wait <= Duration::from_millis(retry.max_retry_after_ms)).then_some(*wait)
        }
        AttemptFailure::Timeout(_) | AttemptFailure::Unsupported(_) => None,
        // `backoff_ms = 0` turns these retries off rather than hammering.
        _ if retry.backoff_ms == 0 => None,
        _ => {
            let full = retry.backoff_ms.saturating_mul(1 << retries.min(10)).min(retry.max_retry_after_ms);
            // Equal jitter: at least half the backoff, so retries stay spaced.
            Some(Duration::from_millis(full / 2 + rand::random::<u64>() % (full / 2 + 1)))
        }
    }
}

/// One call to one target, with its time limits: the whole answer within
/// the backend's `timeout_ms`, or a stream's first event within its
/// `first_token_timeout_ms`; both within what is left of the request budget.
async fn try_target(target: &Target, inbound: &InboundRequest, request_id: &str, remaining: Duration) -> Result<Success, AttemptFailure> {
    let call = Call { inbound, model: &target.model, request_id, prefill: None };
    let config = &target.upstream.config;
    if inbound.stream {
        let limit = Duration::from_millis(config.first_token_timeout_ms).min(remaining);
        first_event(&target.upstream, &call, limit).await.map(|(first, rest)| Success::Stream(first, rest))
    } else {
        let limit = config.timeout().min(remaining);
        let answer = async {
            match target.upstream.call(&call).await? {
                Reply::Complete(answer) => Ok(Success::Complete(answer)),
                Reply::Stream(_) => Err(AttemptFailure::Protocol("a stream for a non-streaming request".into())),
            }
        };
        tokio::time::timeout(limit, answer).await.unwrap_or(Err(AttemptFailure::Timeout("response")))
    }
}

/// Calls for a stream and waits for its first event, within `limit`.
pub(super) async fn first_event(upstream: &Upstream, call: &Call<'_>, limit: Duration) -> Result<(SseEvent, EventStream), AttemptFailure> {
    let first = async {
        match upstream.call(call).await? {
            Reply::Stream(mut rest) => match rest.next().await {
                Some(Ok(first)) => match error_event(&first) {
                    // An error event first is a failure before the first byte.
                    Some(message) => Err(AttemptFailure::ErrorEvent(message)),
                    None => Ok((first, rest)),
                },
                Some(Err(failure)) => Err(failure),
                None => Err(AttemptFailure::StreamEnded),
            },
            Reply::Complete(_) => Err(AttemptFailure::Protocol("a complete answer to a streaming request".into())),
        }
    };
    tokio::time::timeout(limit, first).await.unwrap_or(Err(AttemptFailure::Timeout("first token")))
}

/// The message of an event that is an error object.
fn error_event(event: &SseEvent) -> Option<String> {
    match event {
        SseEvent::Data(chunk) => ChunkView::read(chunk)?.error(),
        SseEvent::Done => None,
    }
}

fn is_context_length(failure: &AttemptFailure) -> bool {
    match failure {
        AttemptFailure::Status { status: 400 | 413, body, .. } => {
            failure.error_code().as_deref() == Some("context_length_exceeded") || String::from_utf8_lossy(body).contains("context length")
        }
        _ => false,
    }
}

/// The upstream's own error, passed on when it is OpenAI-shaped.
fn refused(upstream: &Arc<Upstream>, failure: AttemptFailure) -> Outcome {
    match failure {
        AttemptFailure::Status { status, body, .. }
            if serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.get("error").is_some()) =>
        {
            Outcome::Refused { upstream: upstream.clone(), status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body }
        }
        other => Outcome::Failed(GatewayError::upstream(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            format!("backend `{}` {}", upstream.name(), other.describe()),
        )),
    }
}

/// The error when no target answered.
fn no_answer(last: Option<&AttemptFailure>, attempts: u32, failures: &[String]) -> GatewayError {
    let detail = if failures.is_empty() { String::new() } else { format!(" ({})", failures.join("; ")) };
    match last {
        None => GatewayError::upstream(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_backend_available",
            format!("no backend could take this request{detail}"),
        ),
        Some(AttemptFailure::Status { status: 429, .. }) => GatewayError::upstream(
            StatusCode::TOO_MANY_REQUESTS,
            "upstream_rate_limited",
            format!("every backend tried is rate-limited{detail}"),
        ),
        Some(AttemptFailure::Timeout(_)) => GatewayError::upstream(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("no backend answered in time after {attempts} attempts{detail}"),
        ),
        Some(_) => GatewayError::upstream(StatusCode::BAD_GATEWAY, "upstream_failed", format!("all {attempts} attempts failed{detail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_for_a_short_retry_after_or_back_off_and_never_follow_a_timeout() {
        let retry = RetryConfig { backoff_ms: 100, max_retry_after_ms: 1000, ..RetryConfig::default() };
        let status = |retry_after| AttemptFailure::Status { status: 503, retry_after, body: Bytes::new() };
        assert_eq!(retry_wait(&status(Some(Duration::from_millis(700))), &retry, 0), Some(Duration::from_millis(700)));
        assert_eq!(retry_wait(&status(Some(Duration::from_secs(5))), &retry, 0), None, "a long Retry-After is not waited for");
        assert_eq!(retry_wait(&AttemptFailure::Timeout("response"), &retry, 0), None);
        let off = RetryConfig { backoff_ms: 0, ..retry.clone() };
        assert_eq!(retry_wait(&status(None), &off, 0), None, "backoff_ms = 0: no retry at once");
        assert_eq!(retry_wait(&status(Some(Duration::from_millis(700))), &off, 0), Some(Duration::from_millis(700)));
        for (retries, low, high) in [(0, 50, 100), (1, 100, 200), (2, 200, 400), (5, 500, 1000), (40, 500, 1000)] {
            for _ in 0..50 {
                let wait = retry_wait(&status(None), &retry, retries).unwrap();
                assert!((low..=high).contains(&(wait.as_millis() as u64)), "retry {retries}: {wait:?}");
            }
        }
    }
}
