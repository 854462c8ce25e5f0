//! The OpenAI Responses API (`POST /v1/responses`) through the running
//! router: the official `openai` Python package's `responses` client, the
//! bytes a Responses backend receives, and what the policy sees. The
//! package must be installed (`scripts/test` does): a missing one fails the
//! test rather than skipping it.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::{post, received, router, Proc};

/// A router whose models are served by the mock upstream as an
/// OpenAI-compatible chat backend (`chat`) or one that serves the Responses
/// API itself (`resp`), with a failing one, a rescue pair and a policy route.
fn responses_router(dir: &std::path::Path, mock: &Proc) -> Proc {
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
model = "chat"
targets = ["oai-chat"]

[[routes]]
model = "resp"
targets = ["oai-resp"]

[[routes]]
model = "chat-first"
targets = ["oai-chat", "oai-resp"]

[[routes]]
model = "cut"
targets = ["oai-cut"]

[[routes]]
model = "resp-cut"
targets = ["resp-cut"]

[[routes]]
model = "canon"
targets = ["oai-canon"]

[[routes]]
model = "rescued"
targets = ["resp-cut-canon", "oai-canon"]

[[routes]]
model = "policy"
policy = "cheapest-healthy"

[[backends]]
name = "oai-chat"
provider = "openai"
base_url = "{m}/v1"
model = "chat-mock"
input_price = 1.0
capabilities = {{ tools = true, json_mode = true }}

[[backends]]
name = "oai-resp"
provider = "openai"
base_url = "{m}/v1"
model = "resp-mock"
input_price = 2.0
capabilities = {{ tools = true, json_mode = true, responses = true }}

[[backends]]
name = "oai-cut"
provider = "openai"
base_url = "{m}/v1"
model = "cut?fault=cut&chunks=6"
input_price = 9.0

[[backends]]
name = "resp-cut"
provider = "openai"
base_url = "{m}/v1"
model = "cut?fault=cut&chunks=6"
input_price = 9.0
capabilities = {{ responses = true }}

[[backends]]
name = "resp-cut-canon"
provider = "openai"
base_url = "{m}/v1"
model = "canon?fault=cut&chunks=6&answer=canonical"
input_price = 9.0
capabilities = {{ responses = true }}

[[backends]]
name = "oai-canon"
provider = "openai"
base_url = "{m}/v1"
model = "canon?answer=canonical"
input_price = 9.0
"#,
        m = mock.url
    );
    router(dir, &config, &[])
}

#[test]
fn the_openai_python_sdk_responses_client_works_against_the_router() {
    let has_sdk = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "the `openai` Python package is missing: run `scripts/test`, which installs it, or `python3 -m pip install openai==3.54.0`"
    );
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = responses_router(dir.path(), &mock);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sdk/responses_client.py");
    let out = Command::new("python3").args([script, &router.url, &mock.url, "sk-client-key-1"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}\nrouter log:\n{}", String::from_utf8_lossy(&out.stderr), router.logs());
}

const KEY: (&str, &str) = ("authorization", "Bearer sk-client-key-1");

#[tokio::test(flavor = "multi_thread")]
async fn a_responses_backend_gets_the_request_byte_for_byte_but_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = responses_router(dir.path(), &mock);
    let body = r#"{"future_field": {"model": "keep me"},  "model" : "r\u0065sp", "input":"Byte for byte \u00e9",
 "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"], "store": false}"#;
    let response = support::client().post(format!("{}/v1/responses", router.url)).header(KEY.0, KEY.1).body(body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let seen = received(&mock).await;
    let seen = seen.last().unwrap();
    assert_eq!(seen["path"], "/v1/responses");
    assert_eq!(seen["raw"].as_str().unwrap(), body.replace(r#""r\u0065sp""#, r#""resp-mock""#));
    assert_eq!(seen["authorization"], Value::Null, "the client's key is not passed on");
    // The answer comes back as the backend gave it (the mock's has no `tools` echo).
    assert_eq!(answer["model"], "resp-mock");
    assert!(answer.get("tools").is_none(), "passed through, not rebuilt: {answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_sees_a_responses_request_and_built_in_tools_skip_chat_backends() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = responses_router(dir.path(), &mock);
    let body = json!({"model": "policy", "input": [{"role": "user", "content": [{"type": "input_text", "text": "Route me"}]}],
        "instructions": "Be kind.", "user": "user-7", "max_output_tokens": 20, "tools": TOOLS.clone()});
    let a = post(&router.url, "/v1/responses", &body, &[KEY, ("x-switchyard-team", "blue")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-switchyard-backend"), Some("oai-chat"), "cheapest-healthy picks the cheapest");
    assert_eq!(a.json()["object"], "response");
    let records = support::decision_records(&dir.path().join("decisions.jsonl"), 1).await;
    let request = &records.last().unwrap()["request"];
    assert_eq!(request["surface"], "responses", "{request}");
    assert_eq!(request["tags"]["switchyard.api"], "responses", "{request}");
    assert_eq!(request["tags"]["team"], "blue", "{request}");
    assert_eq!((request["user"].as_str(), request["max_output_tokens"].as_u64()), (Some("user-7"), Some(20)), "{request}");
    assert_eq!(request["tools"], json!(["lookup"]), "{request}");
    let roles: Vec<&str> = request["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user"]);

    support::clear(&mock).await;
    let built_in = json!({"model": "chat-first", "input": "Search it", "tools": [{"type": "web_search"}]});
    let a = post(&router.url, "/v1/responses", &built_in, &[KEY]).await;
    assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("oai-resp")), "{}", a.body);
    assert_eq!(received(&mock).await.len(), 1, "the chat backend got nothing");
    let only_chat = json!({"model": "chat", "input": "Search it", "tools": [{"type": "web_search"}]});
    let a = post(&router.url, "/v1/responses", &only_chat, &[KEY]).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("`web_search`"), "{}", a.body);
}

static TOOLS: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| json!([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]));
