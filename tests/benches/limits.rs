//! The router's own work for limits, budgets and the response cache, per
//! request, in process (the end-to-end figures are `bench/limits.sh`'s;
//! at one connection this machine's noise is larger than these):
//!
//! - `admit+settle/two-scopes`: a client scope (rpm, tpm, concurrency and a
//!   budget) and a route scope, admitted and settled on the node's books.
//! - `cache/key`: the hash of a chat request's meaning.
//! - `cache/miss`: a lookup that misses, the answer checked, then kept.
//! - `cache/hit`: a lookup that hits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::cache::{self, replay, Entry, ResponseCache};
use switchyard::config::{BudgetConfig, LimitsConfig, RouteCacheConfig};
use switchyard::contract::ApiSurface;
use switchyard::metrics::Metrics;
use switchyard::openai::inbound::{self, CallerIdentity, ParseContext, ViewLimits};
use switchyard::quota::{Ask, Quotas, Scope, ScopeKind, Use};

const ANSWER: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"This is a mock answer from m to: hello. This is a mock answer from","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":16,"total_tokens":19}}"#;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("limits");
    group.measurement_time(Duration::from_secs(3));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let quotas = Arc::new(Quotas::new(None, Arc::new(Metrics::new())));
    let limits = LimitsConfig { rpm: Some(100_000_000), tpm: Some(100_000_000_000), concurrency: Some(1000) };
    let budget = Some(BudgetConfig { daily_usd: Some(1e6), monthly_usd: Some(1e7) });
    let scopes = vec![
        Scope { key: "client:a".into(), kind: ScopeKind::Client, name: "client `a`".into(), limits, budget },
        Scope { key: "route:m:a".into(), kind: ScopeKind::Route, name: "route `m`".into(), limits, budget: None },
    ];
    let ask = Ask { id: "r".into(), scopes, tokens: 40, nano_usd: 1000, lease: Duration::from_secs(60) };
    group.bench_function("admit+settle/two-scopes", |b| {
        b.iter(|| {
            let (ticket, _) = runtime.block_on(quotas.admit(ask.clone(), Vec::new()));
            ticket.expect("admitted").settle(Some(Use { tokens: 30, nano_usd: 900 }));
        })
    });

    let cache = ResponseCache::new(64 << 20, None, Arc::new(Metrics::new()));
    let config = RouteCacheConfig { mode: switchyard::config::CacheMode::All, ..Default::default() };
    let body = br#"{"model":"m","messages":[{"role":"user","content":"Summarise the plot of Hamlet in one line."}]}"#;
    let headers = hyper::HeaderMap::new();
    let caller = CallerIdentity::default();
    let cx = ParseContext {
        headers: &headers,
        caller: &caller,
        request_id: "r",
        limits: ViewLimits { text_bytes: 16 << 10, messages: 256 },
        seed: 1,
        api: None,
    };
    let request = inbound::parse(ApiSurface::Chat, &bytes::Bytes::from_static(body), cx).unwrap();
    group.bench_function("cache/key", |b| b.iter(|| cache::key("m", &request)));
    let mut n = 0u64;
    group.bench_function("cache/miss", |b| {
        b.iter(|| {
            n += 1;
            let key = *blake3::hash(&n.to_le_bytes()).as_bytes();
            let plan = cache::plan(&config, "m", &request, None).unwrap();
            assert!(cache.local(&key).is_none() && plan.read);
            assert!(replay::finished(ANSWER));
            cache.put(key, Entry::new(Bytes::from_static(ANSWER), vec![], "a".into(), Some((3, 16)), Duration::from_secs(600)));
        })
    });
    let key = cache::key("m", &request);
    cache.put(key, Entry::new(Bytes::from_static(ANSWER), vec![], "a".into(), Some((3, 16)), Duration::from_secs(600)));
    group.bench_function("cache/hit", |b| b.iter(|| cache.local(&key).expect("kept")));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
