//! Building decisions.

use crate::{Backend, Decision, Rejection, Route, Tag, Target};

/// Starts a routing decision over `backends`, in order: the first is the
/// primary, the others are fallbacks.
pub fn route<'a>(backends: impl IntoIterator<Item = &'a Backend>) -> RouteBuilder {
    RouteBuilder {
        route: Route {
            targets: backends.into_iter().map(|b| Target { backend: b.name.clone(), model: None }).collect(),
            labels: Vec::new(),
        },
    }
}

/// Refuses the request with an HTTP status (400 to 599) and a message for
/// the client.
pub fn reject(status: u16, message: impl Into<String>) -> Decision {
    Decision::Reject(Rejection { status, message: message.into() })
}

/// A routing decision under construction; turns into a [`Decision`] with
/// `.into()`.
#[derive(Debug, Clone)]
pub struct RouteBuilder {
    route: Route,
}

impl RouteBuilder {
    /// Appends a fallback.
    pub fn then(mut self, backend: &Backend) -> Self {
        self.route.targets.push(Target { backend: backend.name.clone(), model: None });
        self
    }

    /// Appends fallbacks, in order.
    pub fn then_all<'a>(mut self, backends: impl IntoIterator<Item = &'a Backend>) -> Self {
        self.route.targets.extend(backends.into_iter().map(|b| Target { backend: b.name.clone(), model: None }));
        self
    }

    /// Appends a fallback that asks `backend` for `model` instead of its
    /// default model.
    pub fn then_model(mut self, backend: &Backend, model: &str) -> Self {
        self.route.targets.push(Target { backend: backend.name.clone(), model: Some(model.to_owned()) });
        self
    }

    /// Keeps at most `n` targets.
    pub fn limit(mut self, n: usize) -> Self {
        self.route.targets.truncate(n);
        self
    }

    /// Adds a label (experiment arm, reason) for logs, metrics and headers.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.route.labels.push(Tag { key: key.to_owned(), value: value.to_owned() });
        self
    }

    /// Whether no target was chosen.
    pub fn is_empty(&self) -> bool {
        self.route.targets.is_empty()
    }
}

impl From<RouteBuilder> for Decision {
    fn from(builder: RouteBuilder) -> Self {
        Decision::Route(builder.route)
    }
}
