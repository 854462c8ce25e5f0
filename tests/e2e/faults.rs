//! The fault suite: every fault of the mock upstream, driven through the
//! real router, with a fallback configured and without one. What must hold:
//! no request outlives its budget; a fault before the first byte is rescued
//! by a fallback (after one retry of the same backend when the failure was
//! transient), and after it, with no fallback, ends the stream with an error
//! event, never a clean `[DONE]` (tests/e2e/rescue.rs has the rescues);
//! retries are bounded, spaced and honour `Retry-After`; a
//! flapping backend's circuit opens and closes again; the model reported is
//! the one that answered; the router is healthy afterwards.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{chat, clear, mock_upstream, post, received, router, Answer, Proc};
use switchyard_tests::artifacts;

/// The request budget (`retry.total_timeout_ms`) of the fault configs.
const BUDGET_MS: u64 = 4000;
/// What the router may take beyond a budget: scheduling, a slow CI machine.
const SLACK: Duration = Duration::from_millis(1500);

/// One faulty backend: its name, the mock's fault query, and limits.
struct Faulty {
    name: &'static str,
    query: &'static str,
}

/// Backends with faults the router must rescue, or report, plus `good`.
const FAULTY: &[Faulty] = &[
    Faulty { name: "429", query: "fault=429&retry_after=1" },
    Faulty { name: "429-bare", query: "fault=429-bare" },
    Faulty { name: "500-once", query: "fault=500-once" },
    Faulty { name: "503", query: "fault=503" },
    Faulty { name: "reset", query: "fault=reset" },
    Faulty { name: "hang", query: "fault=hang" },
    Faulty { name: "slow-first-token", query: "fault=slow-first-token&delay_ms=3000" },
    Faulty { name: "cut0", query: "fault=cut&chunks=0" },
    Faulty { name: "stall0", query: "fault=stall&chunks=0" },
    Faulty { name: "malformed0", query: "fault=malformed&chunks=0" },
    Faulty { name: "error-event0", query: "fault=error-event&chunks=0" },
    Faulty { name: "cut3", query: "fault=cut&chunks=3" },
    Faulty { name: "stall3", query: "fault=stall&chunks=3" },
    Faulty { name: "malformed3", query: "fault=malformed&chunks=3" },
    Faulty { name: "no-done", query: "fault=no-done" },
    Faulty { name: "context-length", query: "fault=context-length" },
    Faulty { name: "content-policy", query: "fault=content-policy" },
];

/// A config where route `via-<fault>` tries `bad-<fault>` (cheapest) first
/// and `good` second, through a copy of the cheapest-healthy policy; asking
/// for `bad-<fault>` by name tries it alone.
fn fault_config(dir: &std::path::Path, mock: &str) -> String {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let tags: Vec<String> = FAULTY.iter().map(|f| format!("\"{}\"", f.name)).collect();
    let mut config = format!(
        r#"
[retry]
max_attempts = 3
total_timeout_ms = {BUDGET_MS}
max_retry_after_ms = 2000

[circuit]
failure_threshold = 1000

[policies]
dir = "policies"

[[backends]]
name = "good"
provider = "openai"
base_url = "{mock}/v1"
api_key = "${{UPSTREAM_KEY}}"
model = "good-model"
tags = [{tags}]
input_price = 1.0
timeout_ms = 5000
"#,
        tags = tags.join(", ")
    );
    // A backend slower than the request budget: the budget must win.
    config.push_str(&format!(
        "\n[[backends]]\nname = \"hang-long\"\nprovider = \"openai\"\nbase_url = \"{mock}/v1\"\nmodel = \"hang-long?fault=hang\"\ntimeout_ms = 600000\nfirst_token_timeout_ms = 600000\n"
    ));
    for f in FAULTY {
        std::fs::copy(artifacts::CHEAPEST_HEALTHY, policies.join(format!("fb-{}.wasm", f.name))).unwrap();
        config.push_str(&format!(
            r#"
[[backends]]
name = "bad-{name}"
provider = "openai"
base_url = "{mock}/v1"
model = "bad-{name}?{query}"
tags = ["{name}"]
input_price = 0.0
timeout_ms = 500
first_token_timeout_ms = 500
stream_idle_timeout_ms = 500

[[routes]]
model = "via-{name}"
policy = "fb-{name}"

[policies.config.fb-{name}]
require_tag = "{name}"
max_targets = 2
"#,
            name = f.name,
            query = f.query,
        ));
    }
    config
}

/// Faults the same backend is retried once after (`retry.same_backend`):
/// a 5xx or a broken connection. `500-once` then answers itself.
const TRANSIENT: &[&str] = &["500-once", "503", "reset", "cut0"];

fn assert_rescued(fault: &str, a: &Answer, stream: bool) {
    assert_eq!(a.status, 200, "{fault} (stream {stream}): {}", a.body);
    let (backend, attempts) = match fault {
        "500-once" => (format!("bad-{fault}"), "2"),
        _ if TRANSIENT.contains(&fault) => ("good".to_owned(), "3"),
        _ => ("good".to_owned(), "2"),
    };
    assert_eq!(a.header("x-switchyard-backend"), Some(backend.as_str()), "{fault} (stream {stream})");
    assert_eq!(a.header("x-switchyard-attempts"), Some(attempts), "{fault} (stream {stream})");
    let model = if backend == "good" { "good-model".to_owned() } else { backend.clone() };
    if stream {
        let events = a.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{fault}: {}", a.body);
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["model"], model, "{fault}: the model that answered is reported");
    } else {
        assert_eq!(a.json()["model"], model, "{fault}: the model that answered is reported");
    }
}

/// Every fault that happens before the first byte reaches the client is
/// rescued by the next target; those after it end with an error event,
/// never a clean-looking `[DONE]`.
#[tokio::test(flavor = "multi_thread")]
async fn faults_are_rescued_before_the_first_byte_and_reported_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let router = router(dir.path(), &fault_config(dir.path(), &mock.url), &[("UPSTREAM_KEY", "sk-upstream-secret")]);

    let rescued_plain = ["429", "429-bare", "500-once", "503", "reset", "hang", "cut0", "stall0", "malformed0", "context-length"];
    for fault in rescued_plain {
        let a = post(&router.url, "/v1/chat/completions", &chat(&format!("via-{fault}"), false), &[]).await;
        assert_rescued(fault, &a, false);
    }
    let rescued_stream = ["429", "503", "reset", "slow-first-token", "cut0", "stall0", "malformed0", "error-event0"];
    for fault in rescued_stream {
        let a = post(&router.url, "/v1/chat/completions", &chat(&format!("via-{fault}"), true), &[]).await;
        assert_rescued(fault, &a, true);
    }

    // After bytes reached the client, the fallback's answer continues the
    // stream: the mock's answers share their first words ("This is a mock
    // answer from"), so the regeneration splices on where the client's text
    // ends, and the client has the fallback's whole answer once. (Every
    // break and fallback kind: tests/e2e/rescue.rs.)
    let direct = post(&router.url, "/v1/chat/completions", &chat("good", false), &[]).await;
    let good_text = direct.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    for fault in ["cut3", "stall3", "malformed3"] {
        let a = post(&router.url, "/v1/chat/completions", &chat(&format!("via-{fault}"), true), &[]).await;
        assert_eq!(a.status, 200, "{fault}");
        assert_eq!(a.header("x-switchyard-backend"), Some(format!("bad-{fault}").as_str()), "the backend that started the stream");
        let events = a.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{fault}: {}", a.body);
        let text: String = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(text, good_text, "{fault}: {}", a.body);
        assert!(a.body.contains(&format!(": rescued: `bad-{fault}`")), "{fault}: the seam is marked: {}", a.body);
    }
    // A stream that sent its whole answer but no `[DONE]` is complete.
    let a = post(&router.url, "/v1/chat/completions", &chat("via-no-done", true), &[]).await;
    assert_eq!(a.events().last().map(String::as_str), Some("[DONE]"), "{}", a.body);
    assert_eq!(a.header("x-switchyard-attempts"), Some("1"));

    // A refusal that any model would repeat goes to the client as is, once.
    let a = post(&router.url, "/v1/chat/completions", &chat("via-content-policy", false), &[]).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["code"], "content_policy_violation");
    assert_eq!(a.header("x-switchyard-attempts"), Some("1"));

    // What reached the upstreams: the policy's targets with their models,
    // the upstream key from the environment, the request id.
    let got = received(&mock).await;
    let good: Vec<&Value> = got.iter().filter(|r| r["model"] == "good-model").collect();
    assert!(!good.is_empty());
    assert!(good.iter().all(|r| r["authorization"] == "Bearer sk-upstream-secret"));
    assert!(got.iter().filter(|r| r["model"].as_str().unwrap().starts_with("bad-")).all(|r| r["authorization"].is_null()));
    assert!(got.iter().all(|r| r["x_request_id"].is_string()));
    assert!(got.iter().all(|r| r["traceparent"].is_null()), "trace context sent with tracing off");
    assert!(!router.logs().contains("sk-upstream-secret"), "the upstream key was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_target_fails_the_client_gets_a_clear_error_and_no_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        r#"
[retry]
max_attempts = 5
max_retry_after_ms = 2000
[[routes]]
model = "auto"
policy = "cheapest-healthy"
[[backends]]
name = "a"
provider = "openai"
base_url = "{m}/v1"
model = "a?fault=503"
[[backends]]
name = "b"
provider = "openai"
base_url = "{m}/v1"
model = "b?fault=reset"
[[backends]]
name = "slow-429"
provider = "openai"
base_url = "{m}/v1"
model = "c?fault=429&retry_after=30"
input_price = 9.0
"#,
        m = mock.url
    );
    let router = router(dir.path(), &config, &[]);
    let started = Instant::now();
    let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
    // A 30 s Retry-After is over the limit: the router does not wait for it.
    assert!(started.elapsed() < Duration::from_secs(10), "the router waited {:?}", started.elapsed());
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.header("x-should-retry"), Some("false"));
    assert_eq!(a.header("x-switchyard-attempts"), Some("5"));
    let error = &a.json()["error"];
    assert_eq!(error["code"], "upstream_rate_limited");
    for backend in ["a: answered HTTP 503", "b: connection failed", "slow-429: answered HTTP 429"] {
        assert!(error["message"].as_str().unwrap().contains(backend), "{backend} missing in {error}");
    }
    let models: Vec<String> = received(&mock).await.iter().map(|r| r["model"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        models,
        ["a?fault=503", "a?fault=503", "b?fault=reset", "b?fault=reset", "c?fault=429&retry_after=30"],
        "in the policy's order; a 503 and a reset retried once on the same backend, a 429 not"
    );
}

/// How a request to a faulty backend ends when it has no fallback.
struct Alone {
    fault: &'static str,
    stream: bool,
    status: u16,
    /// The error's `code` (for a 200 stream, the last event's).
    code: &'static str,
    /// Upstream calls, all to the one backend.
    attempts: usize,
    /// The least time the attempts and their waits take: a retry comes
    /// after a `Retry-After` or a backoff, never at once.
    at_least_ms: u64,
}

#[rustfmt::skip]
const ALONE: &[Alone] = &[
    Alone { fault: "429", stream: false, status: 429, code: "upstream_rate_limited", attempts: 3, at_least_ms: 2000 },
    Alone { fault: "429-bare", stream: false, status: 429, code: "upstream_rate_limited", attempts: 3, at_least_ms: 150 },
    Alone { fault: "500-once", stream: false, status: 200, code: "", attempts: 2, at_least_ms: 50 },
    Alone { fault: "503", stream: false, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    Alone { fault: "reset", stream: false, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    Alone { fault: "hang", stream: false, status: 504, code: "upstream_timeout", attempts: 1, at_least_ms: 500 },
    Alone { fault: "slow-first-token", stream: false, status: 504, code: "upstream_timeout", attempts: 1, at_least_ms: 500 },
    Alone { fault: "cut0", stream: false, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    Alone { fault: "stall0", stream: false, status: 504, code: "upstream_timeout", attempts: 1, at_least_ms: 500 },
    Alone { fault: "malformed0", stream: false, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    Alone { fault: "context-length", stream: false, status: 400, code: "context_length_exceeded", attempts: 1, at_least_ms: 0 },
    Alone { fault: "content-policy", stream: false, status: 400, code: "content_policy_violation", attempts: 1, at_least_ms: 0 },
    Alone { fault: "429", stream: true, status: 429, code: "upstream_rate_limited", attempts: 3, at_least_ms: 2000 },
    Alone { fault: "429-bare", stream: true, status: 429, code: "upstream_rate_limited", attempts: 3, at_least_ms: 150 },
    Alone { fault: "500-once", stream: true, status: 200, code: "", attempts: 2, at_least_ms: 50 },
    Alone { fault: "503", stream: true, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    Alone { fault: "reset", stream: true, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    Alone { fault: "hang", stream: true, status: 504, code: "upstream_timeout", attempts: 1, at_least_ms: 500 },
    Alone { fault: "slow-first-token", stream: true, status: 504, code: "upstream_timeout", attempts: 1, at_least_ms: 500 },
    Alone { fault: "cut0", stream: true, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    Alone { fault: "stall0", stream: true, status: 504, code: "upstream_timeout", attempts: 1, at_least_ms: 500 },
    Alone { fault: "malformed0", stream: true, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    // An error event as the first event: a failure before the first byte.
    Alone { fault: "error-event0", stream: true, status: 502, code: "upstream_failed", attempts: 3, at_least_ms: 150 },
    Alone { fault: "cut3", stream: true, status: 200, code: "stream_interrupted", attempts: 1, at_least_ms: 0 },
    Alone { fault: "stall3", stream: true, status: 200, code: "stream_interrupted", attempts: 1, at_least_ms: 500 },
    Alone { fault: "malformed3", stream: true, status: 200, code: "stream_interrupted", attempts: 1, at_least_ms: 0 },
    Alone { fault: "no-done", stream: true, status: 200, code: "", attempts: 1, at_least_ms: 0 },
    Alone { fault: "context-length", stream: true, status: 400, code: "context_length_exceeded", attempts: 1, at_least_ms: 0 },
    Alone { fault: "content-policy", stream: true, status: 400, code: "content_policy_violation", attempts: 1, at_least_ms: 0 },
];

/// Without a fallback, every fault ends in a clear OpenAI-style error (or a
/// stream's error event) within the budget, after bounded, spaced attempts.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_fallback_every_fault_ends_clearly_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let router = router(dir.path(), &fault_config(dir.path(), &mock.url), &[("UPSTREAM_KEY", "sk-upstream-secret")]);
    for case in ALONE {
        let what = format!("{} (stream {})", case.fault, case.stream);
        clear(&mock).await;
        let started = Instant::now();
        let a = post(&router.url, "/v1/chat/completions", &chat(&format!("bad-{}", case.fault), case.stream), &[]).await;
        let took = started.elapsed();
        assert_eq!(a.status, case.status, "{what}: {}", a.body);
        assert!(took < Duration::from_millis(BUDGET_MS) + SLACK, "{what} took {took:?}");
        assert!(took >= Duration::from_millis(case.at_least_ms), "{what}: attempts came too fast ({took:?})");
        assert_eq!(a.header("x-switchyard-attempts"), Some(case.attempts.to_string().as_str()), "{what}");
        let calls = received(&mock).await;
        assert_eq!(calls.len(), case.attempts, "{what}: upstream calls");
        assert!(calls.iter().all(|c| c["model"].as_str().unwrap().starts_with(&format!("bad-{}?", case.fault))), "{what}");

        let events = a.events();
        match (case.status, case.stream) {
            (200, true) => {
                let last = events.last().unwrap_or_else(|| panic!("{what}: no events"));
                if case.code.is_empty() {
                    assert_eq!(last, "[DONE]", "{what}");
                } else {
                    assert!(!events.iter().any(|e| e == "[DONE]"), "{what} ended like a success: {}", a.body);
                    let error: Value = serde_json::from_str(last).unwrap();
                    assert_eq!(error["error"]["code"], case.code, "{what}");
                }
            }
            (200, false) => assert_eq!(a.json()["model"], format!("bad-{}", case.fault), "{what}: the model that answered"),
            _ => {
                let error = &a.json()["error"];
                assert_eq!(error["code"], case.code, "{what}: {error}");
                assert!(error["type"].is_string(), "{what}: {error}");
                let message = error["message"].as_str().unwrap();
                assert!(!message.is_empty());
                if case.status >= 500 || case.status == 429 {
                    assert!(message.contains(&format!("bad-{}", case.fault)), "{what}: the message names the backend: {message}");
                }
            }
        }
    }
    assert_healthy(&router, "good").await;
}

/// A backend whose own timeout is longer than the request's budget: the
/// budget ends the request, for plain requests and streams alike.
#[tokio::test(flavor = "multi_thread")]
async fn the_request_budget_ends_a_hanging_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let router = router(dir.path(), &fault_config(dir.path(), &mock.url), &[("UPSTREAM_KEY", "sk-upstream-secret")]);
    for stream in [false, true] {
        let started = Instant::now();
        let a = post(&router.url, "/v1/chat/completions", &chat("hang-long", stream), &[]).await;
        let took = started.elapsed();
        assert_eq!(a.status, 504, "{}", a.body);
        assert_eq!(a.json()["error"]["code"], "upstream_timeout");
        assert!(took >= Duration::from_millis(BUDGET_MS) && took < Duration::from_millis(BUDGET_MS) + SLACK, "took {took:?}");
    }
    assert_healthy(&router, "good").await;
}

/// A backend that fails twice, works three times, and so on: its circuit
/// opens after two failures (and it is not called while open), lets one
/// probe through after the cool-down, closes on its success, and opens
/// again on the next run of failures.
#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_backend_opens_its_circuit_and_closes_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        r#"
[retry]
same_backend = 0
[circuit]
failure_threshold = 2
open_ms = 3000
[admin]
listen = "127.0.0.1:0"
token = "admin-token-0123456789"
[[routes]]
model = "auto"
policy = "cheapest-healthy"
[[backends]]
name = "flaky"
provider = "openai"
base_url = "{m}/v1"
model = "flaky?fault=flap&fail=2&pass=3"
[[backends]]
name = "steady"
provider = "openai"
base_url = "{m}/v1"
model = "steady-model"
input_price = 1.0
"#,
        m = mock.url
    );
    let router = router(dir.path(), &config, &[]);
    let admin = router.admin_url.clone().unwrap();
    let circuit = || async {
        let backends = support::admin_json(&admin, "/admin/backends", "admin-token-0123456789").await;
        let flaky = backends["backends"].as_array().unwrap().iter().find(|b| b["name"] == "flaky").unwrap().clone();
        flaky["circuit"].as_str().unwrap().to_owned()
    };
    let ask = || async {
        let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let backend = a.header("x-switchyard-backend").unwrap().to_owned();
        // The model reported is the one that answered.
        assert_eq!(a.json()["model"], if backend == "flaky" { "flaky" } else { "steady-model" });
        (backend, a.header("x-switchyard-attempts").unwrap().to_owned())
    };
    let flaky_calls = || async { received(&mock).await.iter().filter(|r| r["model"].as_str().unwrap().starts_with("flaky")).count() };

    for round in 0..2 {
        // Two failures, each rescued by `steady`, open the circuit.
        for _ in 0..2 {
            assert_eq!(ask().await, ("steady".into(), "2".into()), "round {round}");
        }
        assert_eq!(circuit().await, "open", "round {round}");
        let calls = flaky_calls().await;
        for _ in 0..3 {
            assert_eq!(ask().await, ("steady".into(), "1".into()), "round {round}");
        }
        assert_eq!(flaky_calls().await, calls, "round {round}: an open circuit was called");
        // After the cool-down, one probe; it succeeds and closes the circuit.
        // (3 s: what the open circuit is checked on above must fit in it on a busy machine.)
        tokio::time::sleep(Duration::from_millis(3200)).await;
        assert_eq!(ask().await, ("flaky".into(), "1".into()), "round {round}: the probe");
        assert_eq!(circuit().await, "closed", "round {round}");
        for _ in 0..2 {
            assert_eq!(ask().await, ("flaky".into(), "1".into()), "round {round}");
        }
    }
    // Two rounds of fail 2, pass 3: ten calls, none while the circuit was open.
    assert_eq!(flaky_calls().await, 10);
    assert_healthy(&router, "steady").await;
}

/// The router still serves after the faults: its health check passes and
/// a request to a healthy backend, named by `model`, is answered.
async fn assert_healthy(router: &Proc, model: &str) {
    let a = post(&router.url, "/v1/chat/completions", &chat(model, false), &[]).await;
    assert_eq!(a.status, 200, "after the faults: {}", a.body);
    assert_eq!(a.json()["model"], format!("{model}-model"));
}

/// An upstream that redirects is a failed attempt: the router never follows
/// the redirect, so neither the key nor the prompt reaches the other host,
/// for OpenAI-compatible and Anthropic backends alike; the fallback answers.
/// Errors name no upstream URL.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_is_never_followed_and_no_error_names_an_upstream_url() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, elsewhere) = (mock_upstream(dir.path()), mock_upstream(dir.path()));
    let to = |path: &str| format!("{}{path}", elsewhere.url);
    let config = format!(
        r#"
[retry]
backoff_ms = 0
[[routes]]
model = "openai-redirect"
policy = "cheapest-healthy"
[[routes]]
model = "anthropic-redirect"
policy = "cheapest-healthy"
[policies.config.cheapest-healthy]
max_targets = 3
[[backends]]
name = "redirecting-openai"
provider = "openai"
base_url = "{m}/v1"
api_key = "sk-openai-secret"
model = "m?fault=redirect&to={openai_to}"
[[backends]]
name = "redirecting-anthropic"
provider = "anthropic"
base_url = "{m}/v1"
api_key = "sk-ant-secret"
model = "c?fault=redirect&to={anthropic_to}"
[[backends]]
name = "good"
provider = "openai"
base_url = "{m}/v1"
model = "good-model"
input_price = 50.0
[[backends]]
name = "nowhere"
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "nowhere-model"
input_price = 100.0
"#,
        m = mock.url,
        openai_to = to("/v1/chat/completions"),
        anthropic_to = to("/v1/messages"),
    );
    let router = router(dir.path(), &config, &[]);
    for backend in ["redirecting-openai", "redirecting-anthropic"] {
        // Named directly: the only target, so the attempt's failure is the answer.
        let a = post(&router.url, "/v1/chat/completions", &chat(backend, false), &[]).await;
        assert_eq!(a.status, 502, "{backend}: {}", a.body);
        let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("redirect (HTTP 307)"), "{backend}: {message}");
        assert!(!message.contains("127.0.0.1"), "{backend}: an upstream URL in {message}");
    }
    // Through a policy, the cheapest (redirecting) backends fail and `good` answers.
    for model in ["openai-redirect", "anthropic-redirect"] {
        let a = post(&router.url, "/v1/chat/completions", &chat(model, true), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("good")), "{model}: {}", a.body);
    }
    assert!(received(&elsewhere).await.is_empty(), "the redirect was followed: {:?}", received(&elsewhere).await);
    // A backend that refuses connections: the error says so, without its URL.
    let a = post(&router.url, "/v1/chat/completions", &chat("nowhere", false), &[]).await;
    assert_eq!(a.status, 502, "{}", a.body);
    let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("connection failed") && !message.contains("127.0.0.1:9"), "{message}");
}
