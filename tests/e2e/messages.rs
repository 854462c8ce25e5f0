//! The Anthropic Messages API (`POST /v1/messages`) through the running
//! router: the official `anthropic` Python package as a client, the bytes an
//! Anthropic backend receives, what the policy sees, and the error shapes.
//! The package must be installed (`scripts/test` does): a missing one fails
//! the test rather than skipping it.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::{post, received, router, Proc};

/// A router whose models are served by the mock upstream as an Anthropic
/// backend (`claude`) or an OpenAI-compatible one (`gpt`), with failing
/// variants, a rescue pair and a policy route.
fn messages_router(dir: &std::path::Path, mock: &Proc) -> Proc {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::copy(switchyard_tests::artifacts::CHEAPEST_HEALTHY, dir.join("policies/cheapest-healthy.wasm")).unwrap();
    let config = format!(
        r#"
[[clients]]
name = "sdk-test"
key = "sk-client-key-1"

[policies]
dir = "policies"

[decision_log]
path = "decisions.jsonl"

[[routes]]
model = "claude"
targets = ["anth"]

[[routes]]
model = "gpt"
targets = ["oai"]

[[routes]]
model = "claude-failover"
targets = ["anth-broken", "oai"]

[[routes]]
model = "broken"
targets = ["anth-broken"]

[[routes]]
model = "cut"
targets = ["anth-cut"]

[[routes]]
model = "canon"
targets = ["oai-canon"]

[[routes]]
model = "rescued"
targets = ["anth-cut-canon", "oai-canon"]

[[routes]]
model = "openai-first"
targets = ["oai", "anth"]

[[routes]]
model = "policy"
policy = "cheapest-healthy"

[[backends]]
name = "anth"
provider = "anthropic"
base_url = "{m}/v1"
model = "claude-mock"
input_price = 3.0
capabilities = {{ tools = true }}

[[backends]]
name = "oai"
provider = "openai"
base_url = "{m}/v1"
model = "gpt-mock"
input_price = 1.0
capabilities = {{ tools = true }}

[[backends]]
name = "anth-broken"
provider = "anthropic"
base_url = "{m}/v1"
model = "broken?fault=503"
input_price = 9.0

[[backends]]
name = "anth-cut"
provider = "anthropic"
base_url = "{m}/v1"
model = "cut?fault=cut&chunks=5"
input_price = 9.0

[[backends]]
name = "anth-cut-canon"
provider = "anthropic"
base_url = "{m}/v1"
model = "canon?fault=cut&chunks=5&answer=canonical"
input_price = 9.0

[[backends]]
name = "oai-canon"
provider = "openai"
base_url = "{m}/v1"
model = "canon?answer=canonical"
input_price = 9.0
capabilities = {{ prefill = true }}
"#,
        m = mock.url
    );
    router(dir, &config, &[])
}

#[test]
fn the_anthropic_python_sdk_works_against_the_router() {
    let has_sdk = Command::new("python3").args(["-c", "import anthropic"]).status().is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "the `anthropic` Python package is missing: run `scripts/test`, which installs it, or `python3 -m pip install anthropic==2.14.0`"
    );
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = messages_router(dir.path(), &mock);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sdk/anthropic_client.py");
    let out = Command::new("python3").args([script, &router.url, &mock.url, "sk-client-key-1"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}\nrouter log:\n{}", String::from_utf8_lossy(&out.stderr), router.logs());
}

const KEY: (&str, &str) = ("x-api-key", "sk-client-key-1");

async fn post_raw(url: &str, body: &'static str, headers: &[(&str, &str)]) -> support::Answer {
    let mut request = support::client().post(format!("{url}/v1/messages")).body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    support::Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap_or_default(),
    }
}

/// `(event name, data)` of a Messages API stream.
fn named_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|e| {
            let mut name = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                }
                if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_backend_gets_the_request_byte_for_byte_but_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = messages_router(dir.path(), &mock);
    // Odd spacing, a field the router does not know, an escaped model name.
    let body = r#"{"future_field": {"model": "keep me"},  "model" : "cl\u0061ude", "max_tokens":20,
 "messages":[{"role":"user","content":[{"type":"text","text":"Byte for byte \u00e9","cache_control":{"type":"ephemeral"}}]}]}"#;
    let a = post_raw(&router.url, body, &[KEY, ("anthropic-version", "2023-06-01"), ("anthropic-beta", "prompt-caching-2024-07-31")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = received(&mock).await;
    let seen = seen.last().unwrap();
    assert_eq!(seen["raw"].as_str().unwrap(), body.replace(r#""cl\u0061ude""#, r#""claude-mock""#));
    assert_eq!(
        (seen["anthropic_version"].as_str(), seen["anthropic_beta"].as_str()),
        (Some("2023-06-01"), Some("prompt-caching-2024-07-31"))
    );
    assert_eq!(seen["x_api_key"], Value::Null, "the client's key is not passed on");
    // The answer comes back as the backend gave it.
    assert_eq!(a.json()["model"], "claude-mock");
    assert!(a.json().get("usage").unwrap().get("cache_read_input_tokens").is_none(), "passed through, not rebuilt: {}", a.body);
    // A Bearer token is a client key too (`ANTHROPIC_AUTH_TOKEN`).
    let a = post_raw(&router.url, body, &[("authorization", "Bearer sk-client-key-1")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = post_raw(&router.url, body, &[]).await;
    assert_eq!((a.status, a.json()["error"]["type"].as_str()), (401, Some("authentication_error")), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_sees_a_messages_request_and_decides_it() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = messages_router(dir.path(), &mock);
    let body = json!({"model": "policy", "max_tokens": 20, "metadata": {"user_id": "user-7"}, "system": "Be kind.",
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Route me"}]});
    let a = post(&router.url, "/v1/messages", &body, &[KEY, ("x-switchyard-team", "blue")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // `cheapest-healthy` picks the cheapest backend: the OpenAI one, by translation.
    assert_eq!(a.header("x-switchyard-backend"), Some("oai"));
    assert_eq!(a.json()["type"], "message");
    let records = support::decision_records(&dir.path().join("decisions.jsonl"), 1).await;
    let request = &records.last().unwrap()["request"];
    assert_eq!(request["surface"], "messages", "a 0.2 policy sees the API; a 0.1 one `chat` and the tag");
    assert_eq!(request["tags"]["switchyard.api"], "messages", "{request}");
    assert_eq!(request["tags"]["team"], "blue", "{request}");
    assert_eq!(request["user"], "user-7", "{request}");
    assert_eq!(request["tools"], json!(["lookup"]), "{request}");
    assert_eq!(request["max_output_tokens"], 20, "{request}");
    let roles: Vec<&str> = request["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user"]);
    // A client cannot set the router's tag.
    let a = post(
        &router.url,
        "/v1/chat/completions",
        &support::chat("policy", false),
        &[("authorization", "Bearer sk-client-key-1"), ("x-switchyard-switchyard.api", "messages")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let records = support::decision_records(&dir.path().join("decisions.jsonl"), 2).await;
    assert!(records.last().unwrap()["request"]["tags"].get("switchyard.api").is_none(), "{}", records.last().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn what_only_anthropic_serves_skips_openai_backends() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = messages_router(dir.path(), &mock);
    let body = json!({"model": "openai-first", "max_tokens": 20,
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "messages": [{"role": "user", "content": "Search it"}]});
    let a = post(&router.url, "/v1/messages", &body, &[KEY]).await;
    assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("anth")), "{}", a.body);
    let seen = received(&mock).await;
    assert_eq!(seen.len(), 1, "the OpenAI backend got nothing: {seen:?}");
    let only_openai = json!({"model": "gpt", "max_tokens": 20, "tools": body["tools"], "messages": body["messages"]});
    let a = post(&router.url, "/v1/messages", &only_openai, &[KEY]).await;
    // No backend it may go to can take it: the client's error, not a failed upstream.
    assert_eq!((a.status, a.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{}", a.body);
    assert_eq!(a.json()["type"], "error", "{}", a.body);
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("web_search_20250305"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_follow_the_messages_event_sequence_and_end_in_an_error_event_when_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = messages_router(dir.path(), &mock);
    let ask = |model: &str| json!({"model": model, "max_tokens": 20, "stream": true, "messages": [{"role": "user", "content": "Stream"}]});
    for model in ["claude", "gpt"] {
        let a = post(&router.url, "/v1/messages", &ask(model), &[KEY]).await;
        assert_eq!(a.header("content-type"), Some("text/event-stream"));
        let events = named_events(&a.body);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[..3], ["message_start", "ping", "content_block_start"], "{model}: {names:?}");
        assert!(names[3..names.len() - 3].iter().all(|n| *n == "content_block_delta"), "{model}: {names:?}");
        assert_eq!(names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"], "{model}: {names:?}");
        assert!(events.iter().all(|(name, data)| data["type"] == name.as_str()), "{model}");
        // An Anthropic backend's events pass as they came (the mock's
        // `message_start` has no `stop_reason`); others are encoded.
        assert_eq!(events[0].1["message"].get("stop_reason").is_none(), model == "claude", "{model}: {}", events[0].1);
        let delta = &events[events.len() - 2].1;
        assert_eq!(
            (delta["delta"]["stop_reason"].as_str(), delta["usage"]["output_tokens"].as_u64()),
            (Some("end_turn"), Some(16)),
            "{model}"
        );
    }
    // Cut after the first text delta, with no target left to continue it.
    let a = post(&router.url, "/v1/messages", &ask("cut"), &[KEY]).await;
    let events = named_events(&a.body);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{}", a.body);
    assert_eq!(data["error"]["type"], "api_error");
    assert!(data["error"]["message"].as_str().unwrap().contains("`anth-cut`"), "{data}");
    assert!(!events.iter().any(|(n, _)| n == "message_stop"), "{}", a.body);
}
