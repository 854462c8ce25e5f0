//! Where the policy is called and the targets of a request are chosen.

use std::sync::Arc;

use tracing::Instrument;

use crate::contract::{idle_stats, Backend, BackendStats, CircuitState};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::openai::inbound::InboundRequest;
use crate::policy::{Decision, LoadedPolicy, PolicyError, PolicyErrorKind, PolicyRegistry};
use crate::telemetry;
use crate::upstream::Upstream;

use super::candidates::{on_canary_side, CanaryArm, Candidates};
use super::{GatewayState, Route, RouteKind};

/// The targets of one request, in order.
pub(super) struct Plan {
    /// `name@version` of the policy that decided, `direct` when the request
    /// named a backend, or the policy's name when it failed.
    pub policy: String,
    pub targets: Vec<Target>,
    pub labels: Vec<(String, String)>,
    /// The version that decided and the stats it was given, for the
    /// decision log (moved here, not copied).
    pub seen: Option<(Arc<LoadedPolicy>, Vec<BackendStats>)>,
    /// No targets: the policy's rejection, or the route's answer to a
    /// policy that could not decide.
    pub refusal: Option<GatewayError>,
    /// The policy could not decide: `targets` are then the route's
    /// `on_policy_error` backends, or `refusal` is a 503.
    pub policy_error: Option<PolicyError>,
    /// Whether a stream that breaks mid-answer may be continued.
    pub rescue: bool,
    /// The policy instance the route names, when a policy route served.
    pub instance: Option<String>,
    /// The side of a canary the request was on, when the policy has one.
    pub canary: Option<CanaryArm>,
    /// The policy's own first target, before backends this configuration
    /// no longer has were dropped: what a shadow is compared with.
    pub decided_first: Option<String>,
    /// Backends the policy chose that this configuration no longer has
    /// (its version was loaded before a reload): skipped, and recorded.
    pub gone: Vec<String>,
}

impl Plan {
    /// The plan of a route no policy decides (`direct`, `targets`, `split`).
    fn without_policy(kind: &str, targets: Vec<Target>, labels: Vec<(String, String)>, rescue: bool) -> Self {
        Self {
            policy: kind.into(),
            targets,
            labels,
            seen: None,
            refusal: None,
            policy_error: None,
            rescue,
            instance: None,
            canary: None,
            decided_first: None,
            gone: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Target {
    pub upstream: Arc<Upstream>,
    pub model: String,
}

/// Chooses the targets for `inbound`: a route's policy, a backend named
/// directly, or the catch-all route's policy. A policy that cannot decide
/// never falls open: its route's `on_policy_error` says what happens.
pub(super) async fn plan(
    state: &GatewayState,
    registry: &PolicyRegistry,
    metrics: &Metrics,
    candidates: &Candidates,
    inbound: &InboundRequest,
) -> Result<Plan, GatewayError> {
    let route = match state.routes.get(&inbound.model) {
        Some(route) => route,
        None => {
            if let Some(indices) = state.direct.get(&inbound.model) {
                let targets = indices.iter().map(|&i| target(&state.upstreams[i], None)).collect();
                return Ok(Plan::without_policy("direct", targets, vec![], state.config.rescue.enabled));
            }
            state.catch_all.as_ref().ok_or_else(|| GatewayError::model_not_found(&inbound.model))?
        }
    };

    let (instance, on_policy_error) = match &route.kind {
        RouteKind::Policy { policy, on_policy_error } => (policy, on_policy_error),
        RouteKind::Targets(indices) => {
            let targets = indices.iter().map(|&i| target(&state.upstreams[i], None)).collect();
            return Ok(Plan::without_policy("targets", targets, vec![], route.rescue));
        }
        RouteKind::Split(arms) => return Ok(split(state, route, arms, inbound)),
    };
    let Some(stable) = registry.get(instance) else {
        let error = PolicyError::new(PolicyErrorKind::NotFound, instance, "no version of this policy is loaded");
        return Ok(policy_failed(state, instance, on_policy_error, route.rescue, metrics, &inbound.view.id, error));
    };
    // A canary beside the policy decides its share of requests.
    let (version, canary) = match candidates.canary(registry, instance) {
        Some(canary) => {
            let candidate = on_canary_side(inbound, canary.version(), state.config.policies.canary.share);
            let arm = CanaryArm { canary: canary.name().to_owned(), version: canary.version().to_owned(), candidate };
            (if candidate { canary } else { stable }, Some(arm))
        }
        None => (stable, None),
    };
    let stats = stats_for(state, version.backends());
    let started = std::time::Instant::now();
    let span = telemetry::decide_span(version.name(), version.version());
    let decision = version.decide_async(inbound.view.clone(), stats).instrument(span).await;
    metrics.decision(version.name(), version.version(), started.elapsed());
    let policy = format!("{}@{}", version.name(), version.version());
    let route_rescue = route.rescue;
    match decision {
        Ok((Decision::Route(mut route), stats)) => {
            let decided_first = route.targets.first().map(|t| t.backend.clone());
            if let Some(arm) = &canary {
                route.labels.push(("canary".into(), if arm.candidate { "candidate" } else { "stable" }.into()));
            }
            let mut gone = Vec::new();
            let targets = route
                .targets
                .into_iter()
                .filter_map(|t| {
                    // A backend the current configuration no longer has is
                    // skipped: the version was loaded before a reload.
                    let Some(upstream) = state.by_name.get(&t.backend).map(|&i| &state.upstreams[i]) else {
                        gone.push(t.backend);
                        return None;
                    };
                    Some(target(upstream, t.model))
                })
                .collect();
            Ok(Plan {
                policy,
                targets,
                labels: route.labels,
                seen: Some((version, stats)),
                refusal: None,
                policy_error: None,
                rescue: route_rescue,
                instance: Some(instance.clone()),
                canary,
                decided_first,
                gone,
            })
        }
        Ok((Decision::Reject { status, message }, stats)) => Ok(Plan {
            policy,
            targets: vec![],
            labels: vec![],
            seen: Some((version, stats)),
            refusal: Some(GatewayError::policy_rejected(status, &message)),
            policy_error: None,
            rescue: route_rescue,
            instance: Some(instance.clone()),
            canary,
            decided_first: None,
            gone: Vec::new(),
        }),
        Err(error) => {
            let mut plan = policy_failed(state, instance, on_policy_error, route.rescue, metrics, &inbound.view.id, error);
            plan.instance = Some(instance.clone());
            plan.canary = canary;
            Ok(plan)
        }
    }
}

fn target(upstream: &Arc<Upstream>, model: Option<String>) -> Target {
    Target { model: model.unwrap_or_else(|| upstream.config.model().to_owned()), upstream: upstream.clone() }
}

/// What a route does when its policy cannot decide: its `on_policy_error`
/// backends and no others, or a 503 naming the policy and the failure.
/// The label says which failure.
fn policy_failed(
    state: &GatewayState,
    policy: &str,
    on_policy_error: &[usize],
    rescue: bool,
    metrics: &Metrics,
    request_id: &str,
    error: PolicyError,
) -> Plan {
    let kind = error.kind().as_str();
    let labels = vec![("policy_error".to_owned(), kind.to_owned())];
    let (targets, refusal, action): (Vec<Target>, _, _) = if on_policy_error.is_empty() {
        (vec![], Some(GatewayError::policy_failed(policy, kind, error.is_retryable())), "reject")
    } else {
        (on_policy_error.iter().map(|&i| target(&state.upstreams[i], None)).collect(), None, "fallback")
    };
    tracing::warn!(%request_id, action, "policy could not decide: {error}");
    metrics.policy_error(policy, kind, action);
    Plan {
        policy: policy.to_owned(),
        targets,
        labels,
        seen: None,
        refusal,
        policy_error: Some(error),
        rescue,
        instance: None,
        canary: None,
        decided_first: None,
        gone: Vec::new(),
    }
}

/// A `split` route's targets: an arm by weight, chosen by a hash of the
/// caller (its `user`, else its client key) so that a caller keeps its arm,
/// or at random for an anonymous one; then the other arms, in order.
fn split(state: &GatewayState, route: &Route, arms: &[(usize, u32)], inbound: &InboundRequest) -> Plan {
    let total: u64 = arms.iter().map(|&(_, w)| u64::from(w)).sum();
    let caller = &inbound.view.caller;
    let point = match caller.user.as_deref().or(caller.key_name.as_deref()) {
        Some(who) => u64::from_le_bytes(blake3::hash(who.as_bytes()).as_bytes()[..8].try_into().unwrap_or_default()) % total.max(1),
        None => inbound.view.seed % total.max(1),
    };
    let mut below = 0;
    let chosen = arms
        .iter()
        .position(|&(_, w)| {
            below += u64::from(w);
            point < below
        })
        .unwrap_or(0);
    let first = arms[chosen].0;
    let targets = std::iter::once(first)
        .chain(arms.iter().map(|&(i, _)| i).filter(|&i| i != first))
        .map(|i| target(&state.upstreams[i], None))
        .collect();
    let arm = state.upstreams[first].name().to_owned();
    let assignment = if caller.user.is_some() || caller.key_name.is_some() { "sticky" } else { "random" };
    let labels = vec![("arm".to_owned(), arm), ("assignment".to_owned(), assignment.to_owned())];
    Plan::without_policy("split", targets, labels, route.rescue)
}

/// Live stats in the order of the version's backends. Fast path: the same
/// backends as the current configuration, in the same order.
fn stats_for(state: &GatewayState, backends: &[Backend]) -> Vec<BackendStats> {
    let aligned = backends.len() == state.upstreams.len() && backends.iter().zip(&state.upstreams).all(|(b, u)| b.name == u.name());
    if aligned {
        return state.upstreams.iter().map(|u| u.stats.view()).collect();
    }
    backends
        .iter()
        .map(|b| match state.by_name.get(&b.name) {
            Some(&i) => state.upstreams[i].stats.view(),
            None => BackendStats { circuit: CircuitState::Open, ..idle_stats() },
        })
        .collect()
}
