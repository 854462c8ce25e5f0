//! Where the policy is called and the targets of a request are chosen.

use std::sync::Arc;

use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::openai::inbound::InboundRequest;
use crate::policy::contract::{BackendStats, CircuitState};
use crate::policy::{idle_stats, Decision, LoadedPolicy, PolicyError, PolicyRegistry};
use crate::telemetry;
use crate::upstream::Upstream;

use super::GatewayState;

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
    /// The policy refused the request (status, message): no targets.
    pub rejected: Option<(u16, String)>,
}

pub(super) struct Target {
    pub upstream: Arc<Upstream>,
    pub model: String,
}

/// Chooses the targets for `inbound`: a route's policy, a backend named
/// directly, or the catch-all route's policy.
pub(super) fn plan(
    state: &GatewayState,
    registry: &PolicyRegistry,
    metrics: &Metrics,
    inbound: &InboundRequest,
) -> Result<Plan, GatewayError> {
    let policy_name = match state.routes.get(&inbound.model) {
        Some(policy) => policy,
        None => {
            if let Some(indices) = state.direct.get(&inbound.model) {
                let targets = indices.iter().map(|&i| target(&state.upstreams[i], None)).collect();
                return Ok(Plan { policy: "direct".into(), targets, labels: vec![], seen: None, rejected: None });
            }
            state.catch_all.as_ref().ok_or_else(|| GatewayError::model_not_found(&inbound.model))?
        }
    };

    let Some(version) = registry.get(policy_name) else {
        let error = PolicyError::new(crate::policy::PolicyErrorKind::NotFound, policy_name, "no version of this policy is loaded");
        metrics.policy_error(policy_name, error.kind().as_str());
        return Ok(default_order(state, policy_name, error));
    };
    let stats = stats_for(state, version.backends());
    let started = std::time::Instant::now();
    let decision = telemetry::decide_span(version.name(), version.version()).in_scope(|| version.decide(&inbound.view, &stats));
    metrics.decision(version.name(), version.version(), started.elapsed());
    let policy = format!("{}@{}", version.name(), version.version());
    match decision {
        Ok(Decision::Route(route)) => {
            let targets = route
                .targets
                .into_iter()
                .filter_map(|t| {
                    // A backend the current configuration no longer has is
                    // skipped: the version was loaded before a reload.
                    let upstream = state.by_name.get(&t.backend).map(|&i| &state.upstreams[i])?;
                    Some(target(upstream, t.model))
                })
                .collect();
            Ok(Plan { policy, targets, labels: route.labels, seen: Some((version, stats)), rejected: None })
        }
        Ok(Decision::Reject { status, message }) => {
            Ok(Plan { policy, targets: vec![], labels: vec![], seen: Some((version, stats)), rejected: Some((status, message)) })
        }
        Err(e) => {
            tracing::warn!(request_id = %inbound.view.id, "policy failed, using the default order: {e}");
            metrics.policy_error(policy_name, e.kind().as_str());
            Ok(default_order(state, policy_name, e))
        }
    }
}

fn target(upstream: &Arc<Upstream>, model: Option<String>) -> Target {
    Target { model: model.unwrap_or_else(|| upstream.config.model().to_owned()), upstream: upstream.clone() }
}

/// Every backend in configuration order, used when the policy cannot decide;
/// the label says why.
fn default_order(state: &GatewayState, policy: &str, error: PolicyError) -> Plan {
    let targets = state.upstreams.iter().map(|u| target(u, None)).collect();
    let labels = vec![("policy_error".to_owned(), error.kind().as_str().to_owned())];
    Plan { policy: policy.to_owned(), targets, labels, seen: None, rejected: None }
}

/// Live stats in the order of the version's backends. Fast path: the same
/// backends as the current configuration, in the same order.
fn stats_for(state: &GatewayState, backends: &[crate::policy::contract::Backend]) -> Vec<BackendStats> {
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
