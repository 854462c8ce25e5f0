//! Where a chat stream that broke after its first byte finds its
//! continuation: the targets the policy ordered after the one that broke,
//! asked to continue the client's text (prefill, where the backend takes
//! it) or to answer again (a regeneration the relay splices on, or
//! refuses). Bounded by the request's attempts, a time budget per break,
//! and the rescues a stream may have.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::attempts::{first_event, Attempt};
use super::plan::Target;
use super::transcript::{Splicer, Transcript};
use crate::metrics::Metrics;
use crate::openai::inbound::InboundRequest;
use crate::openai::sse::SseEvent;
use crate::upstream::{AttemptFailure, Call, EventStream, Upstream};

/// How a continuation follows the client's text.
pub(super) enum Mode {
    /// The stream as first answered.
    Original,
    /// The backend continues the client's text. The prefill was sent
    /// without its trailing whitespace, which the client already has: the
    /// continuation's leading whitespace is dropped while this is set.
    Prefill { trim_start: bool },
    /// The backend answers again; the splicer passes what follows the
    /// client's text.
    Splice(Splicer),
}

impl Mode {
    /// The mode's name in metrics, logs and seam comments.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Prefill { .. } => "prefill",
            Self::Splice(_) => "regenerate",
        }
    }
}

/// One upstream stream of the client's stream.
pub(super) struct Leg {
    pub upstream: Arc<Upstream>,
    pub attempt: Attempt,
    pub first: SseEvent,
    pub rest: EventStream,
    pub mode: Mode,
}

/// What a stream may still use to rescue itself.
pub(super) struct Rescuer {
    inbound: Arc<InboundRequest>,
    request_id: String,
    /// Targets not tried yet, in the policy's order.
    targets: VecDeque<Target>,
    /// Upstream attempts left of the request's `retry.max_attempts`.
    attempts_left: u32,
    /// Breaks that may still be rescued.
    rescues_left: u32,
    /// Time from a break to the continuation's first event.
    budget: Duration,
    metrics: Arc<Metrics>,
}

/// The limits of a stream's rescues.
pub(super) struct RescueLimits {
    pub attempts_left: u32,
    pub max_rescues: u32,
    pub budget: Duration,
}

impl Rescuer {
    /// Rescues for the stream of `inbound`, from `targets` (those after
    /// the one streaming).
    pub(super) fn new(
        inbound: Arc<InboundRequest>,
        request_id: &str,
        targets: Vec<Target>,
        limits: RescueLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inbound,
            request_id: request_id.to_owned(),
            targets: targets.into(),
            attempts_left: limits.attempts_left,
            rescues_left: limits.max_rescues,
            budget: limits.budget,
            metrics,
        }
    }

    /// Finds a continuation of `sent`, trying the remaining targets in
    /// order: by prefill where the backend takes it (and it refusing
    /// prefill, by regeneration on the same backend), else by regeneration.
    /// `new_break` is false when a continuation failed before the client
    /// got any of it: the same break, not one more rescue. Every try is
    /// added to `tries`, for the decision log and the error the client gets
    /// if none works.
    pub(super) async fn rescue(&mut self, sent: &Transcript, new_break: bool, tries: &mut Vec<Value>) -> Option<Leg> {
        if sent.overflowed() {
            tries.push(json!({"skipped": format!("the stream sent more than {} bytes", super::transcript::MAX_KEPT_BYTES)}));
            return None;
        }
        if new_break {
            if self.rescues_left == 0 {
                tries.push(json!({"skipped": "the stream had its most rescues (rescue.max_rescues)"}));
                return None;
            }
            self.rescues_left -= 1;
        }
        let deadline = Instant::now() + self.budget;
        // A tool call's arguments cannot be resumed reliably: only an
        // identical regeneration continues it.
        let prefill = sent.prefill().filter(|_| !sent.has_tool_calls());
        while let Some(target) = self.targets.pop_front() {
            let upstream = &target.upstream;
            if self.attempts_left == 0 {
                tries.push(json!({"skipped": "the request had its most attempts (retry.max_attempts)"}));
                return None;
            }
            if Instant::now() >= deadline {
                tries.push(json!({"skipped": "the rescue's time budget ran out"}));
                return None;
            }
            if let Some(why) = upstream.cannot_serve(&self.inbound) {
                tries.push(json!({"backend": upstream.name(), "skipped": why}));
                continue;
            }
            if !upstream.stats.admit() {
                tries.push(json!({"backend": upstream.name(), "skipped": "circuit open"}));
                continue;
            }
            let mut modes = Vec::with_capacity(2);
            if let Some(text) = prefill.filter(|_| upstream.config.prefill()) {
                modes.push(Some(text));
            }
            modes.push(None);
            for prefill in modes {
                if self.attempts_left == 0 {
                    break;
                }
                self.attempts_left -= 1;
                let mode_name = if prefill.is_some() { "prefill" } else { "regenerate" };
                match self.start(&target, prefill.map(str::trim_end), deadline).await {
                    Ok((attempt, first, rest)) => {
                        let mode = match prefill {
                            Some(text) => Mode::Prefill { trim_start: text.len() != text.trim_end().len() },
                            None => Mode::Splice(Splicer::new(sent)),
                        };
                        tries.push(json!({"backend": upstream.name(), "mode": mode_name, "outcome": "started"}));
                        return Some(Leg { upstream: upstream.clone(), attempt, first, rest, mode });
                    }
                    Err(failure) => {
                        tracing::info!(request_id = %self.request_id, backend = upstream.name(), mode = mode_name, "rescue attempt failed: {}", failure.describe());
                        self.metrics.rescue(upstream.name(), mode_name, "failed");
                        tries.push(json!({"backend": upstream.name(), "mode": mode_name, "outcome": failure.describe()}));
                        // A backend that refuses prefill may still answer again.
                        if !(prefill.is_some() && failure.is_bad_request()) {
                            break;
                        }
                    }
                }
            }
        }
        None
    }

    /// One rescue attempt: the first event within the backend's first-token
    /// limit and the rescue's budget.
    async fn start(
        &self,
        target: &Target,
        prefill: Option<&str>,
        deadline: Instant,
    ) -> Result<(Attempt, SseEvent, EventStream), AttemptFailure> {
        let upstream = &target.upstream;
        let call = Call { inbound: &self.inbound, model: &target.model, request_id: &self.request_id, prefill };
        let attempt = Attempt::new(&upstream.stats);
        let limit = Duration::from_millis(upstream.config.first_token_timeout_ms).min(deadline.saturating_duration_since(Instant::now()));
        match first_event(upstream, &call, limit).await {
            Ok((first, rest)) => {
                self.metrics.attempt(upstream.name(), "ok");
                Ok((attempt, first, rest))
            }
            Err(failure) => {
                self.metrics.attempt(upstream.name(), failure.outcome());
                if failure.counts_against_backend() {
                    attempt.fail();
                }
                Err(failure)
            }
        }
    }
}
