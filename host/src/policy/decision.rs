//! Checks a policy's raw answer against the configured backends and turns it
//! into a [`Decision`] the router can follow.

use serde::Serialize;

use super::error::{PolicyError, PolicyErrorKind};
use super::settings::RuntimeSettings;
use crate::contract::{self, Backend};
use crate::text::cut_at_char_boundary;

/// A policy's decision, checked: every target names a configured backend.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decision {
    /// Try these targets in order.
    Route(RoutePlan),
    /// Refuse the request with this status and message.
    Reject {
        /// HTTP status, 400 to 599.
        status: u16,
        /// Message for the client.
        message: String,
    },
}

/// Targets to try, in order, and the labels of the decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutePlan {
    /// The primary first, then fallbacks. Never empty.
    pub targets: Vec<ChosenTarget>,
    /// Labels for logs, metrics and the `x-switchyard-labels` header.
    #[serde(serialize_with = "labels_as_object")]
    pub labels: Vec<(String, String)>,
}

/// One backend to try.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChosenTarget {
    /// Index of the backend in the list the policy was given.
    #[serde(skip)]
    pub index: usize,
    /// The backend's name.
    pub backend: String,
    /// A model to ask for instead of the backend's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Validates `raw` against `backends` and the size limits in `settings`.
pub(crate) fn validate(
    policy: &str,
    raw: contract::Decision,
    backends: &[Backend],
    settings: &RuntimeSettings,
) -> Result<Decision, PolicyError> {
    let invalid = |message: String| PolicyError::new(PolicyErrorKind::InvalidDecision, policy, message);
    match raw {
        contract::Decision::Reject(rejection) => {
            if !(400..=599).contains(&rejection.status) {
                return Err(invalid(format!("rejection status {} is not an HTTP error status (400-599)", rejection.status)));
            }
            let mut message = rejection.message;
            message.truncate(cut_at_char_boundary(&message, settings.max_reject_message_bytes).len());
            Ok(Decision::Reject { status: rejection.status, message })
        }
        contract::Decision::Route(route) => {
            if route.targets.is_empty() {
                return Err(invalid("the decision names no target".into()));
            }
            if route.targets.len() > settings.max_targets {
                return Err(invalid(format!(
                    "the decision names {} targets, more than the limit of {}",
                    route.targets.len(),
                    settings.max_targets
                )));
            }
            if route.labels.len() > settings.max_labels {
                return Err(invalid(format!(
                    "the decision carries {} labels, more than the limit of {}",
                    route.labels.len(),
                    settings.max_labels
                )));
            }
            if let Some(tag) = route
                .labels
                .iter()
                .find(|t| t.key.len() > settings.max_label_bytes || t.value.len() > settings.max_label_bytes || t.key.is_empty())
            {
                return Err(invalid(format!(
                    "label `{}` is empty or longer than {} bytes",
                    cut_at_char_boundary(&tag.key, 64),
                    settings.max_label_bytes
                )));
            }
            let mut targets = Vec::with_capacity(route.targets.len());
            for target in route.targets {
                let Some(index) = backends.iter().position(|b| b.name == target.backend) else {
                    return Err(invalid(format!("the decision names unknown backend `{}`", cut_at_char_boundary(&target.backend, 128))));
                };
                if target.model.as_deref() == Some("") {
                    return Err(invalid(format!("the decision asks backend `{}` for an empty model name", target.backend)));
                }
                targets.push(ChosenTarget { index, backend: target.backend, model: target.model });
            }
            let labels = route.labels.into_iter().map(|t| (t.key, t.value)).collect();
            Ok(Decision::Route(RoutePlan { targets, labels }))
        }
    }
}

fn labels_as_object<S: serde::Serializer>(labels: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(labels.iter().map(|(k, v)| (k, v)))
}
