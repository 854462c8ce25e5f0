//! Rate limits and spend budgets on one node, through the running router:
//! requests, tokens and concurrency per client key and per route, OpenAI's
//! 429 and `x-ratelimit-*` headers, budgets refused with
//! `insufficient_quota` and seen by the policy as `switchyard.budget-used`,
//! settlement once per request whatever its failovers.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{post, router, Answer, Proc};
use switchyard_tests::artifacts;

/// Backends on the mock upstream (`flaky` fails with 503 every time), the
/// observer policy on `chat`, and a client key per kind of limit.
fn limits_config(mock: &str) -> String {
    format!(
        r#"
[retry]
max_attempts = 3
same_backend = 0
total_timeout_ms = 5000

[circuit]
failure_threshold = 100000

[admin]
listen = "127.0.0.1:0"

[policies]
dir = "policies"

[[backends]]
name = "a"
provider = "openai"
base_url = "{mock}/v1"
model = "m-a"
input_price = 1000.0
output_price = 2000.0

[[backends]]
name = "flaky"
provider = "openai"
base_url = "{mock}/v1"
model = "flaky?fault=503"

[[routes]]
model = "chat"
policy = "observer"

[[routes]]
model = "limited"
targets = ["a"]
limits = {{ rpm = 2 }}

[[routes]]
model = "failover"
targets = ["flaky", "a"]

[[backends]]
name = "refuses"
provider = "openai"
base_url = "{mock}/v1"
model = "r?fault=content-policy"

[[routes]]
model = "refused"
targets = ["refuses"]

[[backends]]
name = "prompt-cached"
provider = "openai"
base_url = "{mock}/v1"
model = "m-c?cached=1000"
input_price = 100000.0
cached_input_price = 0.0
output_price = 1000.0

[[routes]]
model = "prompt-cached"
targets = ["prompt-cached"]

[[backends]]
name = "slow"
provider = "openai"
base_url = "{mock}/v1"
model = "m-slow?gap_ms=100"

[[routes]]
model = "slow"
targets = ["slow"]

[[clients]]
name = "rpm"
key = "key-rpm-0000"
limits = {{ rpm = 3 }}

[[clients]]
name = "tpm"
key = "key-tpm-0000"
limits = {{ tpm = 400 }}

[[clients]]
name = "conc"
key = "key-conc-000"
limits = {{ concurrency = 1 }}

[[clients]]
name = "budget"
key = "key-budget-0"
budget = {{ daily_usd = 0.5 }}

[[clients]]
name = "cache-budget"
key = "key-cache-bud"
budget = {{ daily_usd = 0.1 }}

[[clients]]
name = "free"
key = "key-free-000"

[[clients]]
name = "free2"
key = "key-free2-00"
"#
    )
}

fn start(dir: &std::path::Path) -> (Proc, Proc) {
    let mock = support::mock_upstream(dir);
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(artifacts::OBSERVER, policies.join("observer.wasm")).unwrap();
    let router = router(dir, &limits_config(&mock.url), &[]);
    (mock, router)
}

async fn ask(router: &Proc, key: &str, body: Value) -> Answer {
    post(&router.url, "/v1/chat/completions", &body, &[("authorization", &format!("Bearer {key}"))]).await
}

fn remaining_tokens_of(a: &Answer) -> u64 {
    a.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap()
}

/// How many tokens a tpm of 400 (one every 150 ms) may have given back
/// since `started`, plus one for a part of a token.
fn refilled_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis() / 150).unwrap_or(u64::MAX) + 1
}

fn hello(model: &str, max_tokens: Option<u32>) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}]});
    if let Some(n) = max_tokens {
        body["max_tokens"] = json!(n);
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_per_minute_count_down_then_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (_mock, router) = start(dir.path());
    for remaining in ["2", "1", "0"] {
        let a = ask(&router, "key-rpm-0000", hello("chat", None)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(a.header("x-ratelimit-remaining-requests"), Some(remaining));
        assert!(a.header("x-ratelimit-reset-requests").is_some_and(|r| r.ends_with('s')), "{:?}", a.headers);
        assert_eq!(a.header("x-ratelimit-limit-tokens"), None, "no token limit, no token headers");
    }
    let refused = ask(&router, "key-rpm-0000", hello("chat", None)).await;
    assert_eq!(refused.status, 429);
    let error = &refused.json()["error"];
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("requests"), Some("rate_limit_exceeded")));
    assert!(error["message"].as_str().unwrap().contains("client `rpm`: limit 3"), "{error}");
    // A minute holds 3: the next one fits in 20 s.
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((19..=20).contains(&wait), "retry-after {wait}");
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), Some("0"));
    // The Messages API refuses in its own shape.
    let messages = post(
        &router.url,
        "/v1/messages",
        &json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
        &[("x-api-key", "key-rpm-0000")],
    )
    .await;
    assert_eq!(messages.status, 429);
    assert_eq!(messages.json()["error"]["type"], "rate_limit_error", "{}", messages.body);
    // Another key is not limited by this one's count.
    assert_eq!(ask(&router, "key-free-000", hello("chat", None)).await.status, 200);
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_ref().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"switchyard_quota_refusals_total{scope="client",reason="requests"} 2"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_reserved_then_settled_with_the_real_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (_mock, router) = start(dir.path());
    // Reserved: the prompt estimate plus max_tokens 300, of 400 a minute.
    let started = Instant::now();
    let first = ask(&router, "key-tpm-0000", hello("chat", Some(300))).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let reserved = 400 - first.header("x-ratelimit-remaining-tokens").unwrap().parse::<u64>().unwrap();
    assert!(reserved > 300, "reserved {reserved}");
    let used = first.json()["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used < 100, "the mock's answer is short: {used}");
    // Settled with the real use: the next request sees only `used` gone (and its own reservation).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = ask(&router, "key-tpm-0000", hello("chat", Some(300))).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let left = second.header("x-ratelimit-remaining-tokens").unwrap().parse::<u64>().unwrap();
    // (Tokens come back with time: 400 a minute is one every 150 ms.)
    let expected = 400 - used - reserved;
    let refilled = refilled_since(started);
    assert!((expected..=expected + refilled).contains(&left), "settlement gave back {reserved} - {used}: {left} left, not {expected}");
    // About 360 are left: a third that reserves 380 more does not fit.
    let third = ask(&router, "key-tpm-0000", hello("chat", Some(380))).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.json()["error"]["type"], "tokens");
    assert!(third.header("retry-after").is_some());
    // One that could never fit is told so, and not to retry.
    let huge = ask(&router, "key-tpm-0000", hello("chat", Some(1000))).await;
    assert_eq!(huge.status, 429);
    assert!(huge.json()["error"]["message"].as_str().unwrap().starts_with("Request too large"), "{}", huge.body);
    assert_eq!(huge.header("x-should-retry"), Some("false"));
    assert_eq!(huge.header("retry-after"), None);
    // A budget that is not a count would reserve nothing: refused as the API refuses it.
    for (key, bad) in [
        ("max_tokens", json!("5000")),
        ("max_tokens", json!(500.7)),
        ("max_tokens", json!(-5)),
        ("max_tokens", json!(1e30)),
        ("max_completion_tokens", json!(-100000)),
        ("n", json!(0)),
        ("n", json!("2")),
    ] {
        let mut body = hello("chat", None);
        body[key] = bad.clone();
        let a = ask(&router, "key-tpm-0000", body).await;
        assert_eq!((a.status, a.json()["error"]["param"].as_str()), (400, Some(key)), "{key} = {bad}: {}", a.body);
    }
    // Each of `n` choices may use the whole budget: two of 300 never fit 400.
    let mut two = hello("chat", Some(300));
    two["n"] = json!(2);
    let a = ask(&router, "key-tpm-0000", two).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.json()["error"]["message"].as_str().unwrap().starts_with("Request too large"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_counts_a_stream_until_it_ends_or_its_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (_mock, router) = start(dir.path());
    // A slow stream (20 events 100 ms apart) holds the one slot.
    let slow = json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten eleven twelve"}]});
    // Its headers come once it is admitted and streaming.
    let stream_slowly = || {
        support::client()
            .post(format!("{}/v1/chat/completions", router.url))
            .header("authorization", "Bearer key-conc-000")
            .json(&slow)
            .send()
    };
    let held = stream_slowly().await.unwrap();
    let refused = ask(&router, "key-conc-000", hello("chat", None)).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("in flight"), "{}", refused.body);
    assert_eq!(held.status(), 200);
    assert!(held.text().await.unwrap().contains("[DONE]"));
    assert_eq!(ask(&router, "key-conc-000", hello("chat", None)).await.status, 200, "the slot is free once the stream ended");

    // A client that leaves mid-stream frees the slot too.
    let response = stream_slowly().await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if ask(&router, "key-conc-000", hello("chat", None)).await.status == 200 {
            freed = true;
            break;
        }
    }
    assert!(freed, "the slot stayed taken after the client left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_routes_limits_hold_for_each_client_key_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (_mock, router) = start(dir.path());
    for key in ["key-free-000", "key-free2-00"] {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(ask(&router, key, hello("limited", None)).await.status);
        }
        assert_eq!(got, [200, 200, 429], "key {key}");
    }
    let refused = ask(&router, "key-free-000", hello("limited", None)).await;
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("route `limited` for client `free`"), "{}", refused.body);
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_ref().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"switchyard_quota_refusals_total{scope="route",reason="requests"} 3"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_is_spent_by_real_usage_seen_by_the_policy_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, router) = start(dir.path());
    // Backend `a` costs $1000/M input, $2000/M output: a short answer is a few cents.
    let mut fractions = Vec::new();
    let mut spent = 0.0;
    let mut answered: u32 = 0;
    loop {
        let a = ask(&router, "key-budget-0", hello("chat", None)).await;
        if a.status != 200 {
            assert_eq!(a.status, 429, "{}", a.body);
            let error = &a.json()["error"];
            assert_eq!(
                (error["type"].as_str(), error["code"].as_str()),
                (Some("insufficient_quota"), Some("insufficient_quota")),
                "{error}"
            );
            assert!(error["message"].as_str().unwrap().contains("$0.5 a day"), "{error}");
            assert_eq!(a.header("x-should-retry"), Some("false"));
            break;
        }
        answered += 1;
        let usage = &a.json()["usage"];
        spent += (usage["prompt_tokens"].as_f64().unwrap() * 1000.0 + usage["completion_tokens"].as_f64().unwrap() * 2000.0) / 1e6;
        let labels = a.header("x-switchyard-labels").unwrap_or_default().to_owned();
        let budget = labels.split(',').find_map(|l| l.strip_prefix("budget=")).map(|v| v.parse::<f64>().unwrap());
        fractions.push(budget.expect("the policy sees switchyard.budget-used"));
        assert!(answered < 100, "the budget never ran out");
        // Settlement happens as the answer ends; let it land before the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refused only once the real spend reached the budget, and not long after.
    let per_answer = spent / f64::from(answered);
    assert!(spent >= 0.5 && spent < 0.5 + per_answer, "spent {spent} over {answered} answers");
    assert!(fractions.windows(2).all(|w| w[1] > w[0]), "the fraction the policy sees grows: {fractions:?}");
    assert!(fractions.last().copied().unwrap() > 0.8, "{fractions:?}");
    // Failed requests cost nothing: a key without a budget is unaffected, and the mock saw only answered calls.
    let calls = support::received(&mock).await.len();
    assert_eq!(calls, answered as usize, "a refused request never reaches an upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failover_is_admitted_and_settled_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, router) = start(dir.path());
    // `failover` tries `flaky` (503) then `a`: two upstream calls, one request.
    let started = Instant::now();
    let first = ask(&router, "key-tpm-0000", hello("failover", Some(10))).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-switchyard-attempts"), Some("2"));
    let reserved = 400 - first.header("x-ratelimit-remaining-tokens").unwrap().parse::<u64>().unwrap();
    let used = first.json()["usage"]["total_tokens"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = ask(&router, "key-tpm-0000", hello("chat", Some(10))).await;
    let left = second.header("x-ratelimit-remaining-tokens").unwrap().parse::<u64>().unwrap();
    let expected = 400 - used - reserved;
    assert!(
        (expected..=expected + refilled_since(started)).contains(&left),
        "the failover's tokens counted once: {left} left, not {expected}"
    );
    assert_eq!(support::received(&mock).await.len(), 3);
    // A model nothing serves: 404, with the key's limits, and nothing used.
    let unknown = ask(&router, "key-tpm-0000", hello("no-such-model", Some(10))).await;
    assert_eq!((unknown.status, unknown.header("x-ratelimit-limit-tokens")), (404, Some("400")), "{}", unknown.body);
    let after = ask(&router, "key-tpm-0000", hello("chat", Some(10))).await;
    let reserved_after = 400 - remaining_tokens_of(&after);
    assert!(reserved_after <= reserved + used + 2 + used, "the 404 settled as nothing used: {reserved_after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_cache_reads_are_priced_as_the_backend_says() {
    let dir = tempfile::tempdir().unwrap();
    let (_mock, router) = start(dir.path());
    // Every prompt token is a cache read, free; output costs $1000/M. At the
    // input price ($100,000/M) one answer would spend the $0.1 day at once.
    let mut answered = 0;
    loop {
        let a = ask(&router, "key-cache-bud", hello("prompt-cached", None)).await;
        if a.status == 429 {
            break;
        }
        assert_eq!(a.status, 200, "{}", a.body);
        let usage = &a.json()["usage"];
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"], "{usage}");
        answered += 1;
        assert!(answered < 50, "the budget never ran out");
    }
    // 16 output tokens an answer: $0.016 each, so the seventh crosses $0.1.
    assert_eq!(answered, 7, "answers within the budget");
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_ref().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"switchyard_cost_micro_usd_total{backend="prompt-cached"} 112000"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstreams_refusal_uses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_mock, router) = start(dir.path());
    // Refused by the upstream (its 4xx passed on): reserved 300 and more, then given back.
    let refused = ask(&router, "key-tpm-0000", hello("refused", Some(300))).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let reserved = 400 - remaining_tokens_of(&refused);
    let next = ask(&router, "key-tpm-0000", hello("refused", Some(300))).await;
    assert_eq!(next.status, 400, "{}", next.body);
    let left = remaining_tokens_of(&next);
    assert!(left + 2 >= 400 - reserved, "the first refusal still holds tokens: {left} left after reserving {reserved}");
}
