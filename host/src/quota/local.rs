//! The books of one node: each scope's rate state, requests in flight and
//! spend, in memory (lost on restart; the shared store keeps them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::{gcra, unix_now, windows, Admitted, Ask, LimitState, RateHeaders, Reason, Refused, Use};

/// One scope's books.
#[derive(Debug, Default)]
struct Book {
    /// TAT of requests a minute, seconds since `LocalBooks::epoch`.
    requests_tat: f64,
    /// TAT of tokens a minute.
    tokens_tat: f64,
    in_flight: u32,
    /// Spend reserved by requests in flight, nano-dollars.
    reserved: u64,
    /// (UTC day, spent) and (UTC month, spent).
    day: (u64, u64),
    month: (u64, u64),
}

impl Book {
    fn spent(&mut self, day: u64, month: u64) -> (u64, u64) {
        if self.day.0 != day {
            self.day = (day, 0);
        }
        if self.month.0 != month {
            self.month = (month, 0);
        }
        (self.day.1, self.month.1)
    }
}

/// Every scope's books on this node.
pub(super) struct LocalBooks {
    /// By scope (configured clients and routes; foldhash: SipHash showed in profiles).
    books: RwLock<HashMap<String, Arc<Mutex<Book>>, foldhash::fast::RandomState>>,
    epoch: Instant,
}

impl Default for LocalBooks {
    fn default() -> Self {
        Self { books: RwLock::default(), epoch: Instant::now() }
    }
}

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalBooks {
    fn book(&self, key: &str) -> Arc<Mutex<Book>> {
        if let Some(book) = self.books.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return book.clone();
        }
        self.books.write().unwrap_or_else(|p| p.into_inner()).entry(key.to_owned()).or_default().clone()
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Checks every scope, then takes from all of them, or from none.
    pub(super) fn admit(&self, ask: &Ask) -> Result<Admitted, Refused> {
        let books: Vec<_> = ask.scopes.iter().map(|s| self.book(&s.key)).collect();
        // Locked in key order, so two requests never wait on each other crosswise.
        let mut order: Vec<usize> = (0..books.len()).collect();
        order.sort_by(|&a, &b| ask.scopes[a].key.cmp(&ask.scopes[b].key));
        let mut guards: Vec<Option<MutexGuard<'_, Book>>> = (0..books.len()).map(|_| None).collect();
        for i in order {
            guards[i] = Some(lock(&books[i]));
        }
        let now = self.now();
        let (day, month) = windows(unix_now());
        let mut admitted = Admitted::default();
        let mut takes = Vec::with_capacity(books.len());
        for (i, (scope, guard)) in ask.scopes.iter().zip(guards.iter_mut()).enumerate() {
            let Some(book) = guard.as_mut() else { continue };
            let refuse = |reason, retry_after: Option<f64>, headers| Refused {
                reason,
                scope: i,
                retry_after: retry_after.map(|s| Duration::from_secs_f64(s.max(0.0))),
                headers,
            };
            let limits = &scope.limits;
            let requests = match limits.rpm.map(u64::from) {
                Some(limit) => match gcra::take(book.requests_tat, now, limit, 1) {
                    Ok(t) => Some((t, limit)),
                    Err(wait) => {
                        let state = LimitState { limit, remaining: 0, reset_s: wait.unwrap_or(gcra::WINDOW_S) };
                        return Err(refuse(Reason::Requests, wait, RateHeaders { requests: Some(state), tokens: None }));
                    }
                },
                None => None,
            };
            let tokens = match limits.tpm {
                Some(limit) => match gcra::take(book.tokens_tat, now, limit, ask.tokens) {
                    Ok(t) => Some((t, limit)),
                    Err(wait) => {
                        let state =
                            LimitState { limit, remaining: gcra::peek(book.tokens_tat, now, limit).0, reset_s: wait.unwrap_or(0.0) };
                        let reason = if wait.is_some() { Reason::Tokens } else { Reason::TooLarge };
                        return Err(refuse(reason, wait, RateHeaders { requests: None, tokens: Some(state) }));
                    }
                },
                None => None,
            };
            if limits.concurrency.is_some_and(|max| book.in_flight >= max) {
                return Err(refuse(Reason::Concurrency, Some(1.0), RateHeaders::default()));
            }
            let (daily, monthly) = (scope.daily_nano(), scope.monthly_nano());
            if daily > 0 || monthly > 0 {
                let (spent_day, spent_month) = book.spent(day, month);
                let mut fraction: f64 = 0.0;
                for (spent, budget) in [(spent_day, daily), (spent_month, monthly)] {
                    if budget == 0 {
                        continue;
                    }
                    let used = spent + book.reserved;
                    if used >= budget {
                        return Err(refuse(Reason::Budget, None, RateHeaders::default()));
                    }
                    fraction = fraction.max((used + ask.nano_usd) as f64 / budget as f64);
                }
                admitted.budget_used = Some(admitted.budget_used.unwrap_or(0.0).max(fraction));
            }
            let state = |t: &gcra::Taken, limit| LimitState { limit, remaining: t.remaining, reset_s: t.reset_s };
            admitted.headers.tighten(requests.map(|(t, l)| state(&t, l)), tokens.map(|(t, l)| state(&t, l)));
            takes.push((i, requests.map(|(t, _)| t.tat), tokens.map(|(t, _)| t.tat)));
        }
        for (i, requests, tokens) in takes {
            let Some(book) = guards[i].as_mut() else { continue };
            if let Some(tat) = requests {
                book.requests_tat = tat;
            }
            if let Some(tat) = tokens {
                book.tokens_tat = tat;
            }
            book.in_flight += 1;
            book.reserved += ask.nano_usd;
        }
        Ok(admitted)
    }

    /// Gives back the reservation and counts what was used.
    pub(super) fn settle(&self, ask: &Ask, used: Use) {
        let now = self.now();
        let (day, month) = windows(unix_now());
        for scope in &ask.scopes {
            let book = self.book(&scope.key);
            let mut book = lock(&book);
            book.in_flight = book.in_flight.saturating_sub(1);
            book.reserved = book.reserved.saturating_sub(ask.nano_usd);
            if let Some(limit) = scope.limits.tpm {
                let diff = used.tokens as i64 - ask.tokens as i64;
                book.tokens_tat = gcra::settle(book.tokens_tat, now, limit, diff);
            }
            if scope.budget.is_some() {
                book.spent(day, month);
                book.day.1 += used.nano_usd;
                book.month.1 += used.nano_usd;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Scope, ScopeKind};
    use super::*;
    use crate::config::{BudgetConfig, LimitsConfig};

    fn ask(limits: LimitsConfig, budget: Option<BudgetConfig>, tokens: u64, nano_usd: u64) -> Ask {
        let scope = Scope { key: "client:a".into(), kind: ScopeKind::Client, name: "a".into(), limits, budget };
        Ask { id: "r".into(), scopes: vec![scope], tokens, nano_usd, lease: Duration::from_secs(60) }
    }

    #[test]
    fn the_table_of_local_limits() {
        let rpm = |n| LimitsConfig { rpm: Some(n), ..Default::default() };
        let tpm = |n| LimitsConfig { tpm: Some(n), ..Default::default() };
        let conc = |n| LimitsConfig { concurrency: Some(n), ..Default::default() };
        let usd = |d| Some(BudgetConfig { daily_usd: Some(d), monthly_usd: None });
        /// (limits, budget, tokens, cost, requests in a row without settling, admitted, reason of the first refusal)
        type Row = (LimitsConfig, Option<BudgetConfig>, u64, u64, u32, u32, Option<Reason>);
        let table: Vec<Row> = vec![
            (rpm(3), None, 10, 0, 5, 3, Some(Reason::Requests)),
            (tpm(100), None, 30, 0, 5, 3, Some(Reason::Tokens)),
            (tpm(100), None, 101, 0, 1, 0, Some(Reason::TooLarge)),
            (conc(2), None, 1, 0, 4, 2, Some(Reason::Concurrency)),
            // Each reserves 0.4 of a dollar budget: the third finds it spent.
            (LimitsConfig::default(), usd(1.0), 1, 400_000_000, 4, 3, Some(Reason::Budget)),
            (LimitsConfig::default(), None, 1, 0, 50, 50, None),
        ];
        for (n, (limits, budget, tokens, cost, tries, admitted, reason)) in table.into_iter().enumerate() {
            let books = LocalBooks::default();
            let a = ask(limits, budget, tokens, cost);
            let mut ok = 0;
            let mut first = None;
            for _ in 0..tries {
                match books.admit(&a) {
                    Ok(_) => ok += 1,
                    Err(r) => {
                        first.get_or_insert(r.reason);
                    }
                }
            }
            assert_eq!((ok, first), (admitted, reason), "row {n}");
        }
    }

    #[test]
    fn settling_frees_the_slot_and_counts_the_real_use() {
        let books = LocalBooks::default();
        let limits = LimitsConfig { tpm: Some(200), concurrency: Some(1), ..Default::default() };
        let a = ask(limits, Some(BudgetConfig { daily_usd: Some(1.0), monthly_usd: Some(2.0) }), 60, 10);
        let first = books.admit(&a).expect("admitted");
        assert_eq!(first.headers.tokens.map(|t| t.remaining), Some(140));
        assert_eq!(books.admit(&a).unwrap_err().reason, Reason::Concurrency);
        // It used 10 tokens, not 60, and cost 0.6 of a dollar.
        books.settle(&a, Use { tokens: 10, nano_usd: 600_000_000 });
        let second = books.admit(&a).expect("admitted after settling");
        // (One token comes back every 300 ms: a paused test may see it.)
        let remaining = second.headers.tokens.map(|t| t.remaining).unwrap();
        assert!((130..=132).contains(&remaining), "{remaining}");
        let used = second.budget_used.expect("a budget");
        assert!((used - 0.6).abs() < 1e-6, "{used}");
        books.settle(&a, Use { tokens: 60, nano_usd: 500_000_000 });
        assert_eq!(books.admit(&a).unwrap_err().reason, Reason::Budget, "1.1 of a 1-dollar day");
    }

    #[test]
    fn a_refusal_in_one_scope_takes_nothing_from_the_others() {
        let books = LocalBooks::default();
        let open = Scope {
            key: "client:a".into(),
            kind: ScopeKind::Client,
            name: "a".into(),
            limits: LimitsConfig { rpm: Some(10), ..Default::default() },
            budget: None,
        };
        let shut = Scope {
            key: "route:m:a".into(),
            kind: ScopeKind::Route,
            name: "m".into(),
            limits: LimitsConfig { rpm: Some(1), ..Default::default() },
            budget: None,
        };
        let a = Ask { id: "r".into(), scopes: vec![open, shut], tokens: 1, nano_usd: 0, lease: Duration::from_secs(60) };
        books.admit(&a).expect("first");
        for _ in 0..5 {
            let refused = books.admit(&a).unwrap_err();
            assert_eq!((refused.reason, refused.scope), (Reason::Requests, 1));
        }
        let only_client = Ask { scopes: vec![a.scopes[0].clone()], ..a };
        let admitted = books.admit(&only_client).expect("the client scope still has room");
        assert_eq!(admitted.headers.requests.map(|r| r.remaining), Some(8));
    }
}
