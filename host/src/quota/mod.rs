//! Rate limits and spend budgets: a request is admitted (or refused with a
//! 429) after it is parsed and before the policy decides, and settled with
//! its real usage when its answer ends (a stream's when the stream does).
//!
//! A request counts against each of its scopes at once: its client key's
//! (`[[clients]] limits`, `budget`) and its route's for that key
//! (`[[routes]] limits`). Admission takes one request, the request's token
//! estimate (prompt estimate plus `max_tokens`) and a spend reservation (at
//! the dearest backend's prices) in every scope, or nothing; settlement
//! replaces the reservation with what the answer used. Each request is
//! admitted once and settled once, whatever its failovers, retries and
//! rescues, keyed by its reservation id; a reservation a dead node never
//! settled expires after the longest a request may take (`lease`).
//!
//! - `gcra.rs`: the rate arithmetic.
//! - `local.rs`: the books of one node.
//! - `shared.rs`: the same books on the shared store, one script call each
//!   for admission and settlement.

pub mod gcra;
mod local;
mod shared;

/// The sources of the shared store's scripts (for [`SharedStore::new`]).
pub fn shared_scripts() -> Vec<&'static str> {
    shared::SCRIPTS.to_vec()
}

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;

use crate::config::{BudgetConfig, LimitsConfig, OnSharedError};
use crate::metrics::Metrics;
use crate::shared_store::{SharedError, SharedStore};

/// Nano-dollars in a dollar: spend is counted in integers.
pub const NANO_USD: f64 = 1e9;

/// Which configuration a scope comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    /// `[[clients]]`.
    Client,
    /// `[[routes]]`, for one client key.
    Route,
}

impl ScopeKind {
    /// For metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Route => "route",
        }
    }
}

/// One set of limits a request counts against.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// The key of its books: `client:NAME` or `route:MODEL:NAME`.
    pub key: String,
    /// Where it is configured.
    pub kind: ScopeKind,
    /// What error messages call it: "client `a`", "route `m` for client `a`".
    pub name: String,
    /// Its rate limits.
    pub limits: LimitsConfig,
    /// Its spend budget (client scopes only).
    pub budget: Option<BudgetConfig>,
}

impl Scope {
    fn daily_nano(&self) -> u64 {
        self.budget.and_then(|b| b.daily_usd).map_or(0, |usd| (usd * NANO_USD) as u64)
    }

    fn monthly_nano(&self) -> u64 {
        self.budget.and_then(|b| b.monthly_usd).map_or(0, |usd| (usd * NANO_USD) as u64)
    }
}

/// What a request asks to take.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The reservation's id: unique per request.
    pub id: String,
    /// Every scope it counts against.
    pub scopes: Vec<Scope>,
    /// Tokens reserved: the prompt estimate plus `max_tokens`.
    pub tokens: u64,
    /// Spend reserved, in nano-dollars.
    pub nano_usd: u64,
    /// How long the reservation holds if never settled.
    pub lease: Duration,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// The request alone asks more tokens than a minute allows.
    TooLarge,
    /// Requests in flight.
    Concurrency,
    /// The daily or monthly budget is spent.
    Budget,
}

impl Reason {
    /// For metrics and error types.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens | Self::TooLarge => "tokens",
            Self::Concurrency => "concurrency",
            Self::Budget => "budget",
        }
    }
}

/// One limit's state, as the `x-ratelimit-*` headers say it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitState {
    /// The limit a minute.
    pub limit: u64,
    /// What could still be taken now.
    pub remaining: u64,
    /// Seconds until the limit is whole again.
    pub reset_s: f64,
}

/// The `x-ratelimit-*` headers of an answer: the tightest scope's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    /// Requests a minute.
    pub requests: Option<LimitState>,
    /// Tokens a minute.
    pub tokens: Option<LimitState>,
}

impl RateHeaders {
    /// Keeps the tighter of `self` and `other` for each limit.
    fn tighten(&mut self, requests: Option<LimitState>, tokens: Option<LimitState>) {
        fn tighter(a: Option<LimitState>, b: Option<LimitState>) -> Option<LimitState> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        self.requests = tighter(self.requests, requests);
        self.tokens = tighter(self.tokens, tokens);
    }

    /// Writes the headers, OpenAI's names and formats.
    pub fn write(&self, headers: &mut HeaderMap) {
        const REQUESTS: [HeaderName; 3] = [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ];
        const TOKENS: [HeaderName; 3] = [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ];
        for (state, [limit, remaining, reset]) in [(self.requests, REQUESTS), (self.tokens, TOKENS)] {
            let Some(s) = state else { continue };
            headers.insert(limit, HeaderValue::from(s.limit));
            headers.insert(remaining, HeaderValue::from(s.remaining));
            if let Ok(value) = HeaderValue::try_from(duration_text(s.reset_s)) {
                headers.insert(reset, value);
            }
        }
    }
}

/// A duration as OpenAI's reset headers write it: `20ms`, `1.5s`, `6m0s`.
pub fn duration_text(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 1.0 {
        format!("{}ms", (seconds * 1000.0).ceil() as u64)
    } else if seconds < 60.0 {
        let text = format!("{seconds:.3}");
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let whole = seconds.ceil() as u64;
        format!("{}m{}s", whole / 60, whole % 60)
    }
}

/// A request that may go on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admitted {
    /// Its `x-ratelimit-*` headers.
    pub headers: RateHeaders,
    /// The largest fraction of a budget used (spent plus reserved, this
    /// request included), when the caller has a budget.
    pub budget_used: Option<f64>,
}

/// A request refused by a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// Which limit.
    pub reason: Reason,
    /// Index of the scope in the ask.
    pub scope: usize,
    /// When it would fit (`None`: not by waiting).
    pub retry_after: Option<Duration>,
    /// The headers of the refusal.
    pub headers: RateHeaders,
}

/// Why a request cannot go on.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A limit or budget, of this scope.
    Limit(Refused, Scope),
    /// The shared store cannot be reached and `on_shared_error = "reject"`.
    Unavailable(SharedError),
}

/// Which books admitted a request, so that the same books settle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Books {
    Local,
    Shared,
}

/// The limits and budgets of every caller: the node's books, and the
/// shared store's when one is configured.
pub struct Quotas {
    local: local::LocalBooks,
    shared: Option<shared::SharedBooks>,
    metrics: Arc<Metrics>,
}

impl Quotas {
    /// Books on this node, and on `shared` when given.
    pub fn new(shared: Option<Arc<SharedStore>>, metrics: Arc<Metrics>) -> Self {
        Self { local: local::LocalBooks::default(), shared: shared.map(shared::SharedBooks::new), metrics }
    }

    /// Admits `ask` in all its scopes, or refuses it (counted in metrics).
    /// `along`: reads to send in the same round trip on the shared store
    /// (a cached answer); their replies come back when they went.
    pub async fn admit(self: &Arc<Self>, ask: Ask, along: Vec<redis::Cmd>) -> (Result<Ticket, Refusal>, Option<Vec<redis::Value>>) {
        let (verdict, books, replies) = match &self.shared {
            // Boxed: the store's round trip is a large future, and every
            // request's handler would otherwise carry its size.
            Some(books) => match Box::pin(books.admit(&ask, along)).await {
                Ok((verdict, replies)) => (verdict, Books::Shared, Some(replies)),
                Err(e) => {
                    // The store may have run the admission and lost the answer.
                    if e != SharedError::Backoff {
                        books.release(&ask);
                    }
                    if books.store().on_error() == OnSharedError::Reject {
                        return (Err(Refusal::Unavailable(e)), None);
                    }
                    (self.local.admit(&ask), Books::Local, None)
                }
            },
            None => (self.local.admit(&ask), Books::Local, None),
        };
        let verdict = match verdict {
            Ok(admitted) => Ok(Ticket { quotas: self.clone(), ask, books, admitted, settled: false }),
            Err(refused) => {
                let scope = ask.scopes.get(refused.scope).or(ask.scopes.first()).cloned().unwrap_or_else(|| Scope {
                    key: "unknown".into(),
                    kind: ScopeKind::Client,
                    name: "an unknown scope".into(),
                    limits: LimitsConfig::default(),
                    budget: None,
                });
                self.metrics.quota_refusal(scope.kind.as_str(), refused.reason.as_str());
                Err(Refusal::Limit(refused, scope))
            }
        };
        (verdict, replies)
    }

    fn settle(&self, ask: &Ask, books: Books, use_: Use) {
        match (books, &self.shared) {
            (Books::Shared, Some(books)) => books.settle(ask, use_),
            _ => self.local.settle(ask, use_),
        }
    }
}

/// What an answer used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    /// Tokens, prompt and completion.
    pub tokens: u64,
    /// Spend in nano-dollars.
    pub nano_usd: u64,
}

/// An admitted request's reservation; settled once, by [`Ticket::settle`]
/// or, if the request ends without an answer to count, when dropped (as
/// reserved: the upstream may have been charged).
pub struct Ticket {
    quotas: Arc<Quotas>,
    ask: Ask,
    books: Books,
    admitted: Admitted,
    settled: bool,
}

impl Ticket {
    /// What admission said.
    pub fn admitted(&self) -> &Admitted {
        &self.admitted
    }

    /// Replaces the reservation with `used` (`None`: what was reserved).
    pub fn settle(mut self, used: Option<Use>) {
        self.settle_once(used);
    }

    fn settle_once(&mut self, used: Option<Use>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let used = used.unwrap_or(Use { tokens: self.ask.tokens, nano_usd: self.ask.nano_usd });
        self.quotas.settle(&self.ask, self.books, used);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle_once(None);
    }
}

/// Which budget windows now falls in: (UTC day number, UTC month number).
pub fn windows(unix_s: u64) -> (u64, u64) {
    let days = unix_s / 86_400;
    // Howard Hinnant's civil-from-days, for the month.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (days, (year * 12 + month - 1) as u64)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_read_like_openais() {
        for (s, text) in [(0.02, "20ms"), (1.0, "1s"), (1.5, "1.5s"), (59.9994, "59.999s"), (360.0, "6m0s"), (61.2, "1m2s")] {
            assert_eq!(duration_text(s), text, "{s}");
        }
    }

    #[test]
    fn budget_windows_are_utc_days_and_months() {
        // 2026-11-30T23:59:59Z and a second later.
        let (day, month) = windows(1_796_083_199);
        let (next_day, next_month) = windows(1_796_083_200);
        assert_eq!((next_day - day, next_month - month), (1, 1));
        assert_eq!(month, 2026 * 12 + 10);
        // 2024-02-29 is in February.
        assert_eq!(windows(1_709_164_800).1, 2024 * 12 + 1);
    }
}
