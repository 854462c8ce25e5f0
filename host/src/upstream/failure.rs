//! Why one attempt at one backend failed, and what that means for failover.

use std::time::Duration;

use bytes::Bytes;

/// A failed attempt, before any byte reached the client.
#[derive(Debug, Clone)]
pub enum AttemptFailure {
    /// No connection (refused, reset, DNS, TLS).
    Connect(String),
    /// A time limit passed: `connection`, `response`, `first token`, `stream idle`.
    Timeout(&'static str),
    /// The upstream answered with an error status.
    Status {
        /// The status.
        status: u16,
        /// Its `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// Its body (capped).
        body: Bytes,
    },
    /// The answer could not be understood (malformed JSON or stream).
    Protocol(String),
    /// The backend cannot serve this kind of request.
    Unsupported(String),
    /// A stream closed cleanly before `[DONE]`.
    StreamEnded,
    /// A stream carried an error event (its message).
    ErrorEvent(String),
    /// A regeneration meant to continue a broken stream differs from what
    /// the client already has (the backend answered; the splice cannot).
    Diverged(String),
}

impl AttemptFailure {
    /// Whether another target may succeed: connection trouble, timeouts,
    /// 408, 409, 429, 5xx and broken answers. Other 4xx would fail again.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 409 | 429) || *status >= 500,
            _ => true,
        }
    }

    /// Whether the failure says something about the backend's health (and
    /// so counts against its error rate and circuit).
    pub fn counts_against_backend(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            Self::Unsupported(_) | Self::Diverged(_) => false,
            _ => true,
        }
    }

    /// Whether the same backend may answer a moment later: a 500, 502 or
    /// 503, or a broken connection. Not timeouts (their time is spent),
    /// rate limits, other 4xx or broken answers.
    pub fn transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 500 | 502 | 503),
            Self::Connect(_) => true,
            _ => false,
        }
    }

    /// Whether a backend refused a request as malformed (400 or 422): for a
    /// continuation by prefill, that it does not take prefill.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, Self::Status { status: 400 | 422, .. })
    }

    /// The upstream's error `code`, if its body is an OpenAI-style error.
    pub fn error_code(&self) -> Option<String> {
        let Self::Status { body, .. } = self else { return None };
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        v.get("error")?.get("code")?.as_str().map(str::to_owned)
    }

    /// A short stable name, for metrics labels.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect_error",
            Self::Timeout(_) => "timeout",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::Protocol(_) | Self::StreamEnded => "bad_answer",
            Self::ErrorEvent(_) => "error_event",
            Self::Unsupported(_) => "unsupported",
            Self::Diverged(_) => "diverged",
        }
    }

    /// A short description for logs, headers and error messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Connect(e) => format!("connection failed: {e}"),
            Self::Timeout(what) => format!("timed out waiting for the {what}"),
            Self::Status { status, .. } => format!("answered HTTP {status}"),
            Self::Protocol(e) => format!("sent an answer that cannot be used: {e}"),
            Self::Unsupported(e) => e.clone(),
            Self::StreamEnded => "closed the stream before [DONE]".into(),
            Self::ErrorEvent(e) => format!("sent an error event: {e}"),
            Self::Diverged(e) => format!("regenerated a different answer: {e}"),
        }
    }
}

/// Parses `retry-after-ms`, or `retry-after` in seconds or as an HTTP date
/// (a date in the past means now).
pub(crate) fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let number = |name: &str| text(name).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e9);
    let date = || {
        let at = httpdate::parse_http_date(text("retry-after")?).ok()?;
        Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
        .or_else(date)
}

/// An upstream that answered with a redirect. The router never follows one:
/// the request's credentials (`Authorization`, `x-api-key`) and its prompt
/// would go wherever the upstream pointed.
pub(crate) fn redirected(status: u16) -> AttemptFailure {
    AttemptFailure::Protocol(format!("answered with a redirect (HTTP {status}), which the router does not follow"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderMap, HeaderValue};

    fn wait(pairs: &[(&'static str, String)]) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        retry_after(&headers)
    }

    #[test]
    fn retry_after_in_milliseconds_seconds_or_as_a_date() {
        assert_eq!(wait(&[("retry-after-ms", "250".into()), ("retry-after", "9".into())]), Some(Duration::from_millis(250)));
        assert_eq!(wait(&[("retry-after", "1.5".into())]), Some(Duration::from_millis(1500)));
        let in_three = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
        let waited = wait(&[("retry-after", in_three)]).unwrap();
        assert!(waited > Duration::from_secs(1) && waited <= Duration::from_secs(3), "{waited:?}");
        assert_eq!(wait(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".into())]), Some(Duration::ZERO), "a past date means now");
        for garbage in ["soon", "-1", "NaN", "1e300", ""] {
            assert_eq!(wait(&[("retry-after", garbage.into())]), None, "{garbage}");
        }
    }
}
