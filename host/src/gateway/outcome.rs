//! What a request came to, for the policy version that decided it (the
//! contract's `observe`): started when the answer starts, finished when it
//! ends, then handed to the version, which runs it off the request's path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::candidates::CanaryWatch;
use super::plan::Plan;
use crate::contract::{FailedAttempt, Outcome, Tag};
use crate::openai::inbound::InboundRequest;
use crate::policy::LoadedPolicy;
use crate::quota::{Ticket, Use};
use crate::upstream::Upstream;

/// An outcome in the making.
pub(super) struct Observation {
    version: Arc<LoadedPolicy>,
    outcome: Outcome,
    started: Instant,
    /// The backend that answered, for the cost.
    answered: Option<Arc<Upstream>>,
}

impl Observation {
    /// An observation of `inbound`, when the version that decided it asked
    /// for outcomes; `answered` is the backend that answered (for a stream,
    /// the first one), `failed` the attempts that failed before.
    pub(super) fn start(
        plan: &Plan,
        inbound: &InboundRequest,
        answered: Option<&Arc<Upstream>>,
        failed: &[FailedAttempt],
        started: Instant,
    ) -> Option<Self> {
        let (version, _) = plan.seen.as_ref().filter(|(version, _)| version.observes())?;
        let served_by = answered.and_then(|u| plan.targets.iter().position(|t| Arc::ptr_eq(&t.upstream, u))).map(|i| i as u32);
        let outcome = Outcome {
            request_id: inbound.view.id.clone(),
            seed: inbound.view.seed,
            labels: plan.labels.iter().map(|(key, value)| Tag { key: key.clone(), value: value.clone() }).collect(),
            served_by,
            backend: answered.map(|u| u.name().to_owned()),
            status: 0,
            latency_ms: 0.0,
            ttft_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            cost: 0.0,
            failed_attempts: failed.to_vec(),
            rescued: false,
            cache_hit: false,
        };
        Some(Self { version: version.clone(), outcome, started, answered: answered.cloned() })
    }

    /// Notes that the answer came from the response cache.
    pub(super) fn cache_hit(&mut self) {
        self.outcome.cache_hit = true;
    }

    /// Notes the first byte of a streamed answer.
    pub(super) fn first_byte(&mut self, after: Duration) {
        self.outcome.ttft_ms = Some(after.as_secs_f32() * 1000.0);
    }

    /// Finishes the outcome and hands it to the policy (`cached`: prompt
    /// tokens read from the backend's prompt cache).
    pub(super) fn finish(mut self, status: u16, usage: Option<(u64, u64)>, cached: u64, rescued: bool) {
        let o = &mut self.outcome;
        o.status = status;
        o.latency_ms = self.started.elapsed().as_secs_f32() * 1000.0;
        o.rescued = rescued;
        if let Some((input, output)) = usage {
            o.input_tokens = input.min(u64::from(u32::MAX)) as u32;
            o.output_tokens = output.min(u64::from(u32::MAX)) as u32;
            if let Some(u) = &self.answered {
                o.cost = u.config.cost_usd(input, output, cached);
            }
        }
        self.version.observe(self.outcome);
    }
}

/// What runs when a request's answer ends (a stream's, when the stream
/// does): the policy's outcome, the canary's window, and the settlement of
/// the caller's limits and budget.
///
/// Each is boxed: a stream holds its hooks for its whole life, and most
/// requests have one or none of them.
pub(super) struct EndHooks {
    pub observation: Option<Box<Observation>>,
    pub canary: Option<Box<CanaryWatch>>,
    pub quota: Option<Box<QuotaEnd>>,
}

/// A request's reservation, and the backend that answered (none when
/// none did), whose prices it pays.
pub(super) struct QuotaEnd {
    pub ticket: Ticket,
    pub answered: Option<Arc<Upstream>>,
}

impl QuotaEnd {
    /// Settles with `usage`: what it used at the answering backend's
    /// prices; an answer without usage settles as reserved, no answer as
    /// nothing used.
    fn finish(self, usage: Option<(u64, u64)>, cached: u64) {
        let used = match (usage, &self.answered) {
            (Some((input, output)), answered) => {
                let usd = answered.as_ref().map_or(0.0, |u| u.config.cost_usd(input, output, cached));
                Some(Use { tokens: input + output, nano_usd: (usd * crate::quota::NANO_USD).round() as u64 })
            }
            (None, Some(_)) => None,
            (None, None) => Some(Use { tokens: 0, nano_usd: 0 }),
        };
        self.ticket.settle(used);
    }
}

impl EndHooks {
    /// `status`: the client's, or for a stream how it ended (200, 499, 502);
    /// `cached`: prompt tokens the backend read from its prompt cache.
    pub(super) fn finish(self, status: u16, usage: Option<(u64, u64)>, cached: u64, rescued: bool) {
        if let Some(quota) = self.quota {
            (*quota).finish(usage, cached);
        }
        if let Some(canary) = self.canary {
            (*canary).finish(status, usage);
        }
        if let Some(o) = self.observation {
            (*o).finish(status, usage, cached, rescued);
        }
    }
}
