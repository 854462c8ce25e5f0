//! Contract 0.2 beside 0.1, through the running router: components built
//! against 0.1 (`tests/fixtures/contract-0.1/`, the library's policies as
//! they were built before 0.2) load and decide as their 0.2 builds do; a
//! 0.2 policy sees the API surfaces, learns from outcomes through policy
//! state, and a failing `observe` never touches a request.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{post, router, Proc};

const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn contract_router(dir: &std::path::Path, mock: &Proc) -> Proc {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/contract-0.1");
    for (from, to) in [
        (format!("{fixtures}/cheapest-healthy.wasm"), "old-cheapest.wasm"),
        (format!("{fixtures}/ab-test.wasm"), "old-ab.wasm"),
        (switchyard_tests::artifacts::CHEAPEST_HEALTHY.to_owned(), "new-cheapest.wasm"),
        (switchyard_tests::artifacts::AB_TEST.to_owned(), "new-ab.wasm"),
        (switchyard_tests::artifacts::OBSERVER.to_owned(), "observer.wasm"),
    ] {
        std::fs::copy(&from, policies.join(to)).unwrap_or_else(|e| panic!("{from}: {e}"));
    }
    let arms = r#"arms = [{ name = "a", backend = "cheap", weight = 50 }, { name = "b", backend = "dear", weight = 50 }]"#;
    let mut config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "${{ADMIN_TOKEN}}"

[policies]
dir = "policies"

[policies.config.old-ab]
{arms}

[policies.config.new-ab]
{arms}

[[backends]]
name = "cheap"
provider = "openai"
base_url = "{m}/v1"
model = "cheap-model"
input_price = 1.0
capabilities = {{ tools = true }}

[[backends]]
name = "dear"
provider = "openai"
base_url = "{m}/v1"
model = "dear-model"
input_price = 5.0
capabilities = {{ tools = true }}
"#,
        m = mock.url
    );
    for (model, policy) in [
        ("old-cheapest", "old-cheapest"),
        ("new-cheapest", "new-cheapest"),
        ("old-ab", "old-ab"),
        ("new-ab", "new-ab"),
        ("observed", "observer"),
        ("observe-trap", "observer"),
        ("observe-loop", "observer"),
        ("state-bounds", "observer"),
    ] {
        config.push_str(&format!("\n[[routes]]\nmodel = \"{model}\"\npolicy = \"{policy}\"\n"));
    }
    router(dir, &config, &[("ADMIN_TOKEN", ADMIN_TOKEN)])
}

fn labels(a: &support::Answer) -> Vec<String> {
    a.header("x-switchyard-labels").unwrap_or_default().split(',').map(str::to_owned).collect()
}

fn label(a: &support::Answer, key: &str) -> Option<String> {
    labels(a).iter().find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

async fn policies(router: &Proc) -> Vec<Value> {
    let admin = router.admin_url.clone().expect("no admin listener");
    support::admin_json(&admin, "/admin/policies", ADMIN_TOKEN).await["policies"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn components_built_against_0_1_load_and_decide_as_their_0_2_builds() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = contract_router(dir.path(), &mock);
    let worlds: Vec<(String, String)> = policies(&router)
        .await
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["world"].as_str().unwrap_or("none").to_owned()))
        .collect();
    for (name, world) in
        [("old-ab", "0.1.0"), ("old-cheapest", "0.1.0"), ("new-ab", "0.2.0"), ("new-cheapest", "0.2.0"), ("observer", "0.2.0")]
    {
        assert!(worlds.contains(&(name.to_owned(), format!("switchyard:policy/policy@{world}"))), "{name}: {worlds:?}");
    }
    for i in 0..24 {
        let user = format!("user-{i}");
        let body = |model: &str| json!({"model": model, "user": user, "messages": [{"role": "user", "content": format!("Question {i}")}]});
        for (old, new) in [("old-cheapest", "new-cheapest"), ("old-ab", "new-ab")] {
            let (o, n) = (
                post(&router.url, "/v1/chat/completions", &body(old), &[]).await,
                post(&router.url, "/v1/chat/completions", &body(new), &[]).await,
            );
            assert_eq!((o.status, n.status), (200, 200), "{}{}", o.body, n.body);
            assert_eq!(o.header("x-switchyard-backend"), n.header("x-switchyard-backend"), "{old} and {new} for {user}");
            assert_eq!(labels(&o), labels(&n), "{old} and {new} for {user}");
        }
    }
    // A Messages API request: the 0.1 component sees `chat` and still decides.
    let messages =
        json!({"model": "old-ab", "max_tokens": 10, "metadata": {"user_id": "user-3"}, "messages": [{"role": "user", "content": "hi"}]});
    let a = post(&router.url, "/v1/messages", &messages, &[]).await;
    assert_eq!((a.status, a.json()["type"].as_str()), (200, Some("message")), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_0_2_policy_sees_the_surface_and_learns_from_outcomes_in_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = contract_router(dir.path(), &mock);
    let chat = json!({"model": "observed", "messages": [{"role": "user", "content": "hi"}]});
    let messages = json!({"model": "observed", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let responses = json!({"model": "observed", "input": "hi"});
    for (path, body, surface) in
        [("/v1/chat/completions", &chat, "chat"), ("/v1/messages", &messages, "messages"), ("/v1/responses", &responses, "responses")]
    {
        let a = post(&router.url, path, body, &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(label(&a, "surface").as_deref(), Some(surface), "{path}");
    }
    // Each answered request is observed (off its path) and counted in state,
    // which every instance reads.
    let started = Instant::now();
    let mut seen = 0;
    while seen < 10 && started.elapsed() < Duration::from_secs(10) {
        let a = post(&router.url, "/v1/chat/completions", &chat, &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        seen = label(&a, "seen").unwrap().parse::<u64>().unwrap();
    }
    assert!(seen >= 10, "outcomes counted: {seen}");
    let stream = json!({"model": "observed", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let before = seen;
    let a = post(&router.url, "/v1/chat/completions", &stream, &[]).await;
    assert_eq!(a.status, 200);
    let started = Instant::now();
    loop {
        let a = post(&router.url, "/v1/chat/completions", &chat, &[]).await;
        if label(&a, "seen").unwrap().parse::<u64>().unwrap() >= before + 2 || started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let observer = policies(&router).await.into_iter().find(|p| p["name"] == "observer").unwrap();
    assert!(observer["stats"]["observed"].as_u64().unwrap() >= before + 2, "{observer}");
    // State bounds, through the running router: an oversized value is
    // refused, the largest allowed one kept, a value is not a counter.
    let a =
        post(&router.url, "/v1/chat/completions", &json!({"model": "state-bounds", "messages": [{"role": "user", "content": "hi"}]}), &[])
            .await;
    assert_eq!(label(&a, "bounds").as_deref(), Some("true/true/true"), "{}", a.body);
    assert_eq!(observer["stats"]["observe_failures"], 0, "{observer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_observe_never_touches_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let router = contract_router(dir.path(), &mock);
    // Three traps and two loops: five failures in a row bench the policy's
    // background calls, so the next five outcomes are dropped, not run.
    let models = ["observe-trap", "observe-trap", "observe-trap", "observe-loop", "observe-loop"];
    let mut stats = Value::Null;
    for (i, model) in models.iter().chain(&models).enumerate() {
        let a =
            post(&router.url, "/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("cheap")), "{model}: {}", a.body);
        assert!(a.json()["choices"][0]["message"]["content"].as_str().unwrap().starts_with("This is a mock answer"));
        // One at a time: the outcome is done with (failed or dropped) before the next request.
        let started = Instant::now();
        stats = loop {
            let observer = policies(&router).await.into_iter().find(|p| p["name"] == "observer").unwrap();
            let stats = observer["stats"].clone();
            let done = stats["observe_failures"].as_u64().unwrap() + stats["observe_dropped"].as_u64().unwrap();
            if done > i as u64 || started.elapsed() > Duration::from_secs(10) {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
    }
    assert_eq!((stats["observe_failures"].as_u64(), stats["observe_dropped"].as_u64()), (Some(5), Some(5)), "{stats}\n{}", router.logs());
    router.until_logged("failed 5 times in a row: benched for 30 s", 1).await;
    // The policy still decides (its learning resumes after the bench).
    let a = post(&router.url, "/v1/chat/completions", &json!({"model": "observed", "messages": [{"role": "user", "content": "hi"}]}), &[])
        .await;
    assert_eq!(a.status, 200);
    // The guest's panic is its own log line (target `policy`); no router thread panicked.
    assert!(router.logs().lines().all(|l| !l.contains("panicked at") || l.contains("WARN policy:")), "{}", router.logs());
}
