//! The router's error for a client: where it came from, whether a client may
//! retry, and the OpenAI-style JSON body it becomes.

use bytes::Bytes;
use hyper::StatusCode;

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client's request was wrong.
    Client,
    /// The routing policy failed or rejected the request.
    Policy,
    /// The upstream backends failed.
    Upstream,
    /// The router itself.
    Router,
}

impl ErrorSource {
    /// A short stable name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Policy => "policy",
            Self::Upstream => "upstream",
            Self::Router => "router",
        }
    }
}

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    /// HTTP status.
    pub status: StatusCode,
    /// Where it came from.
    pub source: ErrorSource,
    /// OpenAI's error `type`.
    pub kind: &'static str,
    /// OpenAI's error `code`.
    pub code: Option<&'static str>,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// Human-readable message.
    pub message: String,
    /// Whether the client may usefully retry (sets `x-should-retry`).
    pub retryable: bool,
}

impl GatewayError {
    fn new(status: StatusCode, source: ErrorSource, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> Self {
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        Self { status, source, kind, code, param: None, message: message.into(), retryable }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, ErrorSource::Client, "invalid_request_error", None, message);
        e.param = param.map(str::to_owned);
        e
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorSource::Client,
            "invalid_request_error",
            Some("invalid_api_key"),
            "missing or invalid API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`",
        )
    }

    /// 404: no route or backend serves this model.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            ErrorSource::Client,
            "invalid_request_error",
            Some("model_not_found"),
            format!("the model `{model}` does not exist on this router; GET /v1/models lists the models it serves"),
        );
        e.param = Some("model".into());
        e
    }

    /// 404: unknown path.
    pub fn unknown_url(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorSource::Client,
            "invalid_request_error",
            Some("unknown_url"),
            format!("unknown request URL: {method} {path}"),
        )
    }

    /// 405: known path, wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorSource::Client,
            "invalid_request_error",
            None,
            format!("{method} is not allowed on {path}"),
        )
    }

    /// 431: more headers than `server.max_headers` (HTTP/2; hyper answers
    /// HTTP/1 itself).
    pub fn too_many_headers(limit: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorSource::Client,
            "invalid_request_error",
            Some("too_many_headers"),
            format!("the request has more than {limit} headers (server.max_headers)"),
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorSource::Client,
            "invalid_request_error",
            Some("request_too_large"),
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 408: the body did not arrive in time (a client trickling it, say).
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorSource::Client,
            "invalid_request_error",
            Some("request_timeout"),
            format!("the request body did not arrive within {} ms", timeout.as_millis()),
        )
    }

    /// The policy refused the request with its own status and message.
    pub fn policy_rejected(status: u16, message: &str) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        let kind = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
        Self::new(status, ErrorSource::Policy, kind, Some("rejected_by_policy"), message)
    }

    /// The policy could not decide and its route rejects in that case. The
    /// client learns the policy and the kind of failure, not the guest's
    /// own words (those are logged).
    pub fn policy_failed(policy: &str, kind: &'static str, retryable: bool) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorSource::Policy,
            "server_error",
            Some("policy_failed"),
            format!("the routing policy `{policy}` could not decide ({kind}), and this route rejects requests then"),
        );
        e.retryable = retryable;
        e
    }

    /// Every attempt failed.
    pub fn upstream(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, ErrorSource::Upstream, "upstream_error", Some(code), message)
    }

    /// 429: a rate limit of the caller's (`kind`: OpenAI's `requests` or
    /// `tokens`); retryable unless waiting cannot help.
    pub fn rate_limited(kind: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorSource::Client, kind, Some("rate_limit_exceeded"), message);
        e.retryable = retryable;
        e
    }

    /// 429: the caller's spend budget is used up; not retryable.
    pub fn insufficient_quota(message: impl Into<String>) -> Self {
        let mut e =
            Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorSource::Client, "insufficient_quota", Some("insufficient_quota"), message);
        e.retryable = false;
        e
    }

    /// 503: the shared store of limits cannot be reached and the router is
    /// set to refuse rather than count alone.
    pub fn shared_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorSource::Router, "server_error", Some("limits_unavailable"), message)
    }

    /// The router failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorSource::Router, "server_error", None, message)
    }

    /// The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        Bytes::from(self.to_json().to_string())
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status.as_u16(), self.source.as_str(), self.message)
    }
}

impl std::error::Error for GatewayError {}
