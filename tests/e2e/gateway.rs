//! The router end to end: the real `switchyard serve` process, a real mock
//! upstream on its own port, real compiled policies, over HTTP.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{chat, clear, mock_upstream, post, received, router, Answer};
use switchyard_tests::artifacts;

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
    Faulty { name: "cut3", query: "fault=cut&chunks=3" },
    Faulty { name: "stall3", query: "fault=stall&chunks=3" },
    Faulty { name: "malformed3", query: "fault=malformed&chunks=3" },
    Faulty { name: "no-done", query: "fault=no-done" },
    Faulty { name: "context-length", query: "fault=context-length" },
    Faulty { name: "content-policy", query: "fault=content-policy" },
];

/// A config where route `via-<fault>` tries `bad-<fault>` (cheapest) first
/// and `good` second, through a copy of the cheapest-healthy policy.
fn fault_config(dir: &std::path::Path, mock: &str) -> String {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let tags: Vec<String> = FAULTY.iter().map(|f| format!("\"{}\"", f.name)).collect();
    let mut config = format!(
        r#"
[retry]
max_attempts = 3
total_timeout_ms = 10000
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

fn assert_rescued(fault: &str, a: &Answer, stream: bool) {
    assert_eq!(a.status, 200, "{fault} (stream {stream}): {}", a.body);
    assert_eq!(a.header("x-switchyard-backend"), Some("good"), "{fault} (stream {stream})");
    assert_eq!(a.header("x-switchyard-attempts"), Some("2"), "{fault} (stream {stream})");
    if stream {
        let events = a.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{fault}: {}", a.body);
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["model"], "good-model", "{fault}: the model that answered is reported");
    } else {
        assert_eq!(a.json()["model"], "good-model", "{fault}: the model that answered is reported");
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
    let rescued_stream = ["429", "503", "reset", "slow-first-token", "cut0", "stall0", "malformed0"];
    for fault in rescued_stream {
        let a = post(&router.url, "/v1/chat/completions", &chat(&format!("via-{fault}"), true), &[]).await;
        assert_rescued(fault, &a, true);
    }

    // After bytes reached the client, a failure is an SSE error event the
    // SDKs raise on, and there is no [DONE].
    for fault in ["cut3", "stall3", "malformed3", "no-done"] {
        let a = post(&router.url, "/v1/chat/completions", &chat(&format!("via-{fault}"), true), &[]).await;
        assert_eq!(a.status, 200, "{fault}");
        assert_eq!(a.header("x-switchyard-backend"), Some(format!("bad-{fault}").as_str()));
        let events = a.events();
        assert!(!events.iter().any(|e| e == "[DONE]"), "{fault} ended like a success: {}", a.body);
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "stream_interrupted", "{fault}: {}", a.body);
        assert!(events.len() >= 2, "{fault}: the chunks before the failure were passed on");
    }

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
    assert_eq!(a.header("x-switchyard-attempts"), Some("3"));
    let error = &a.json()["error"];
    assert_eq!(error["code"], "upstream_rate_limited");
    for backend in ["a: answered HTTP 503", "b: connection failed", "slow-429: answered HTTP 429"] {
        assert!(error["message"].as_str().unwrap().contains(backend), "{backend} missing in {error}");
    }
    let models: Vec<String> = received(&mock).await.iter().map(|r| r["model"].as_str().unwrap().to_owned()).collect();
    assert_eq!(models, ["a?fault=503", "b?fault=reset", "c?fault=429&retry_after=30"], "one attempt each, in the policy's order");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_retry_after_on_the_last_target_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[retry]\nmax_attempts = 3\nmax_retry_after_ms = 2000\n[[backends]]\nname = \"only\"\nprovider = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"m?fault=429&retry_after=0.3\"\n",
        mock.url
    );
    let router = router(dir.path(), &config, &[]);
    let started = Instant::now();
    let a = post(&router.url, "/v1/chat/completions", &chat("only", false), &[]).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("x-switchyard-attempts"), Some("3"));
    assert_eq!(received(&mock).await.len(), 3);
    // Two waits of 0.3 s between the three attempts: no hammering.
    assert!(started.elapsed() >= Duration::from_millis(600), "attempts came too fast: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_backend_opens_its_circuit_and_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        r#"
[circuit]
failure_threshold = 2
open_ms = 60000
[[routes]]
model = "auto"
policy = "cheapest-healthy"
[[backends]]
name = "flaky"
provider = "openai"
base_url = "{m}/v1"
model = "flaky?fault=503"
[[backends]]
name = "steady"
provider = "openai"
base_url = "{m}/v1"
model = "steady"
input_price = 1.0
"#,
        m = mock.url
    );
    let router = router(dir.path(), &config, &[]);
    for _ in 0..2 {
        let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-attempts")), (200, Some("2")));
    }
    clear(&mock).await;
    for _ in 0..3 {
        let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
        assert_eq!(a.status, 200);
        // The policy sees the open circuit and puts `flaky` last; it is not tried.
        assert_eq!(a.header("x-switchyard-backend"), Some("steady"));
        assert_eq!(a.header("x-switchyard-attempts"), Some("1"));
    }
    assert!(received(&mock).await.iter().all(|r| r["model"] == "steady"), "the open circuit was called");
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_backends_are_translated_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[[backends]]\nname = \"claude\"\nprovider = \"anthropic\"\nbase_url = \"{}/v1\"\napi_key = \"sk-ant-test\"\nmodel = \"claude-test\"\n",
        mock.url
    );
    let router = router(dir.path(), &config, &[]);
    let mut body = chat("claude", false);
    body["messages"] = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello Claude"}]);
    let a = post(&router.url, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().contains("Hello Claude"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    let sent = &received(&mock).await[0];
    assert_eq!(sent["path"], "/v1/messages");
    assert_eq!(sent["x_api_key"], "sk-ant-test");
    assert_eq!(sent["body"]["system"], "Be brief.");

    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let a = post(&router.url, "/v1/chat/completions", &body, &[]).await;
    let events = a.events();
    assert_eq!(events.last().unwrap(), "[DONE]", "{}", a.body);
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.contains("Hello Claude"), "{text}");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    assert!(chunks.last().unwrap()["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_gets_clear_errors_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[server]\nmax_body_bytes = 4096\n[[clients]]\nname = \"team-a\"\nkey = \"${CLIENT_KEY}\"\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let router = router(dir.path(), config, &[("CLIENT_KEY", "client-key-123")]);
    let auth = [("authorization", "Bearer client-key-123")];
    let http = support::client();

    let a = post(&router.url, "/v1/chat/completions", &chat("m", false), &[]).await;
    assert_eq!((a.status, a.json()["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let a = post(&router.url, "/v1/chat/completions", &chat("m", false), &[("authorization", "Bearer wrong-key-000")]).await;
    assert_eq!(a.status, 401);
    for header in [("authorization", "Bearer client-key-123"), ("x-api-key", "client-key-123")] {
        let a = post(&router.url, "/v1/chat/completions", &chat("m", false), &[header]).await;
        assert_eq!(a.status, 200, "{header:?}: {}", a.body);
    }

    let raw = |body: &'static str| {
        http.post(format!("{}/v1/chat/completions", router.url)).header("authorization", "Bearer client-key-123").body(body).send()
    };
    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (raw("{not json").await.unwrap(), 400, "not valid JSON"),
        (raw("[]").await.unwrap(), 400, "JSON object"),
        (raw(r#"{"model": "m"}"#).await.unwrap(), 400, "messages"),
        (raw(r#"{"model": "nope", "messages": [{"role": "user", "content": "x"}]}"#).await.unwrap(), 404, "does not exist"),
        (
            http.post(format!("{}/v1/chat/completions", router.url))
                .header("authorization", "Bearer client-key-123")
                .body("x".repeat(10_000))
                .send()
                .await
                .unwrap(),
            413,
            "larger than 4096",
        ),
        (http.get(format!("{}/v1/chat/completions", router.url)).send().await.unwrap(), 405, "not allowed"),
        (http.get(format!("{}/v2/whatever", router.url)).send().await.unwrap(), 404, "unknown request URL"),
    ];
    for (response, status, message) in cases {
        assert_eq!(response.status().as_u16(), status, "{message}");
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(message), "{body}");
        assert!(body["error"]["type"].is_string());
    }
    let a = post(&router.url, "/v1/chat/completions", &chat("m", false), &auth).await;
    assert_eq!(a.status, 200, "the server is still up");

    // The client's request id is kept; a new one is made otherwise.
    let a = post(&router.url, "/v1/chat/completions", &chat("m", false), &[auth[0], ("x-request-id", "my-id-1")]).await;
    assert_eq!(a.header("x-request-id"), Some("my-id-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_embeddings_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(
        dir.path(),
        "[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n",
        &[],
    );
    let a = post(&router.url, "/v1/completions", &json!({"model": "auto", "prompt": "Say hi"}), &[]).await;
    assert_eq!(a.json()["object"], "text_completion", "{}", a.body);
    let a = post(&router.url, "/v1/embeddings", &json!({"model": "auto", "input": ["a", "b"]}), &[]).await;
    assert_eq!(a.json()["data"].as_array().unwrap().len(), 2, "{}", a.body);
    let models: Value = support::client().get(format!("{}/v1/models", router.url)).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["auto", "m"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_is_hot_reloaded_and_a_broken_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let router = router(dir.path(), base, &[]);
    let path = dir.path().join("switchyard.toml");
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("fresh-route", false), &[]).await.status, 404);

    let write = |text: &str| {
        let tmp = dir.path().join(".switchyard.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(&format!("{base}[[routes]]\nmodel = \"fresh-route\"\npolicy = \"cheapest-healthy\"\n"));
    let started = Instant::now();
    loop {
        let a = post(&router.url, "/v1/chat/completions", &chat("fresh-route", false), &[]).await;
        if a.status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the new route never appeared:\n{}", router.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write("[[backends]]\nname = \"m\"\nprovider = \"bogus\"\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("fresh-route", false), &[]).await.status, 200);
    assert!(router.logs().contains("configuration not reloaded"), "{}", router.logs());
    assert!(router.logs().contains("unknown variant `bogus`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[[backends]]\nname = \"slow\"\nprovider = \"mock\"\nmock = { ttft_ms = 100, tokens_per_second = 20, answer_tokens = 20 }\n";
    let mut router = router(dir.path(), config, &[]);
    let url = router.url.clone();
    let stream = tokio::spawn(async move { post(&url, "/v1/chat/completions", &chat("slow", true), &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = router.terminate();
        (status, router)
    });
    let answer = stream.await.unwrap();
    assert_eq!(answer.events().last().map(String::as_str), Some("[DONE]"), "{}", answer.body);
    let (status, _router) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_serves_offline() {
    let dir = tempfile::tempdir().unwrap();
    let router = support::Proc::start(&["serve", "--listen", "127.0.0.1:0"], dir.path(), &[]);
    let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("x-switchyard-policy").unwrap().starts_with("cheapest-healthy@"));
    assert!(a.json()["choices"][0]["message"]["content"].as_str().unwrap().starts_with("This is a mock answer"));
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path(), "[[backends]]\nname = \"m\"\nprovider = \"mock\"\n", &[]);
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2.post(format!("{}/v1/chat/completions", router.url)).json(&chat("m", true)).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_overhead_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[decision_log]\npath = \"decisions.jsonl\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${{ADMIN_TOKEN}}\"\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[routes]]\nmodel = \"*\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"up\"\nprovider = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"up-model\"\ninput_price = 2.0\noutput_price = 8.0\n",
        mock.url
    );
    let router = router(dir.path(), &config, &[("ADMIN_TOKEN", "admin-token-0123456789")]);
    let admin = router.admin_url.clone().expect("no admin listener");
    let http = support::client();
    for stream in [false, true] {
        let mut body = chat("auto", stream);
        body["stream_options"] = json!({"include_usage": true});
        let a = post(&router.url, "/v1/chat/completions", &body, &[]).await;
        assert_eq!(a.status, 200);
        let overhead: f64 = a.header("x-switchyard-overhead-ms").unwrap().parse().unwrap();
        assert!(overhead > 0.0 && overhead < 1000.0, "overhead {overhead} ms");
    }

    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    for expected in [
        r#"switchyard_requests_total{model="auto",backend="up",policy="cheapest-healthy",status="200",arm=""} 2"#,
        r#"switchyard_attempts_total{backend="up",outcome="ok"} 2"#,
        r#"switchyard_tokens_total{backend="up",direction="output"} 32"#,
        "switchyard_ttft_seconds_count{backend=\"up\"} 1",
        "switchyard_overhead_seconds_count 2",
        "switchyard_policy_decision_seconds_count{policy=\"cheapest-healthy\"",
        "switchyard_circuit_state{backend=\"up\"} 0",
        "switchyard_policy_loaded{policy=\"cheapest-healthy\"} 1",
        "# EOF",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
    let cost: u64 =
        metrics.lines().find_map(|l| l.strip_prefix("switchyard_cost_micro_usd_total{backend=\"up\"} ")).unwrap().parse().unwrap();
    assert!(cost > 0);

    assert_eq!(http.get(format!("{admin}/healthz")).send().await.unwrap().status(), 200);
    let ready: Value = http.get(format!("{admin}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(http.get(format!("{admin}/admin/policies")).send().await.unwrap().status(), 401);
    let bearer = "Bearer admin-token-0123456789";
    let policies: Value =
        http.get(format!("{admin}/admin/policies")).header("authorization", bearer).send().await.unwrap().json().await.unwrap();
    assert_eq!(policies["policies"][0]["name"], "cheapest-healthy");
    assert_eq!(policies["policies"][0]["stats"]["calls"], 2, "{policies}");
    let backends: Value =
        http.get(format!("{admin}/admin/backends")).header("authorization", bearer).send().await.unwrap().json().await.unwrap();
    assert_eq!(backends["backends"][0]["circuit"], "closed");
    assert_eq!(backends["backends"][0]["samples"], 2, "{backends}");
    let reload = http.post(format!("{admin}/admin/reload")).header("authorization", bearer).send().await.unwrap();
    assert_eq!(reload.status(), 200);
    assert!(!router.logs().contains("admin-token-0123456789"));

    // Model names that only the catch-all route serves do not become label
    // values: a client cannot grow the metric series.
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("random-name-123", false), &[]).await.status, 200);
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"switchyard_requests_total{model="other",backend="up",policy="cheapest-healthy",status="200",arm=""} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("random-name-123"));

    // The decision log: one line per routed request, with what the policy
    // saw and decided, and no prompt text unless configured.
    let path = dir.path().join("decisions.jsonl");
    let started = std::time::Instant::now();
    let records: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if records.len() == 3 || started.elapsed() > Duration::from_secs(5) {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records.len(), 3, "{records:?}");
    let first = &records[0];
    assert!(first["policy"].as_str().unwrap().starts_with("cheapest-healthy@"));
    assert_eq!(first["decision"]["targets"][0]["backend"], "up");
    assert_eq!(first["backends"][0]["name"], "up");
    assert_eq!(first["request"]["seed"], first["seed"]);
    assert_eq!(first["request"]["messages"][0]["text_bytes"], 22);
    assert!(first["request"]["messages"][0].get("text").is_none(), "prompt text logged: {first}");
    assert_eq!((first["status"].as_u64(), first["tokens"]["output"].as_u64()), (Some(200), Some(16)));
    assert!(!std::fs::read_to_string(&path).unwrap().contains("Tell me about routers"));

    // Replay: the record's request and backend stats are what `policy eval`
    // reads; with the same policy version (and, for prices, the same
    // configuration), the decision is the same.
    let (request, backends) = (dir.path().join("replay-request.json"), dir.path().join("replay-backends.json"));
    std::fs::write(&request, first["request"].to_string()).unwrap();
    std::fs::write(&backends, first["backends"].to_string()).unwrap();
    let out = std::process::Command::new(support::BIN)
        .args([
            "policy",
            "eval",
            artifacts::CHEAPEST_HEALTHY,
            "--request",
            request.to_str().unwrap(),
            "--backends",
            backends.to_str().unwrap(),
        ])
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replayed["targets"][0]["backend"], first["decision"]["targets"][0]["backend"]);
    assert_eq!(replayed["labels"], first["decision"]["labels"]);
}
