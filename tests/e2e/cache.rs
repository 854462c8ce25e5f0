//! The exact response cache through the running router: hits answer with
//! no upstream call, plain and streamed alike (a stream replayed with the
//! original content, from a plain answer or a streamed one); the rules of
//! who may read and write it (mode, the client's `Cache-Control`, the
//! policy's `cache=skip`); expiry and the size bound; other APIs' shapes;
//! the decision log and metrics.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{post, received, router, Answer, Proc};
use switchyard_tests::artifacts;

fn start(dir: &std::path::Path) -> (Proc, Proc) {
    let mock = support::mock_upstream(dir);
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(artifacts::OBSERVER, policies.join("observer.wasm")).unwrap();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[policies]
dir = "policies"

[decision_log]
path = "decisions.jsonl"

[[backends]]
name = "a"
provider = "openai"
base_url = "{mock}/v1"
model = "m-a"

[[routes]]
model = "cached"
policy = "observer"
cache = {{ ttl_s = 60 }}

[[routes]]
model = "all"
targets = ["a"]
cache = {{ ttl_s = 60, mode = "all" }}

[[routes]]
model = "short"
targets = ["a"]
cache = {{ ttl_s = 3 }}

[[routes]]
model = "tiny"
targets = ["a"]
cache = {{ ttl_s = 60, max_entry_bytes = 64 }}

[[routes]]
model = "uncached"
targets = ["a"]
"#,
        mock = mock.url
    );
    let router = router(dir, &config, &[]);
    (mock, router)
}

fn request(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "temperature": 0, "messages": [{"role": "user", "content": prompt}]})
}

async fn chat(router: &Proc, body: &Value, headers: &[(&str, &str)]) -> Answer {
    post(&router.url, "/v1/chat/completions", body, headers).await
}

/// The text of a plain answer or of a stream's content deltas.
fn text(a: &Answer) -> String {
    if a.header("content-type") == Some("text/event-stream") {
        assert!(a.body.trim_end().ends_with("data: [DONE]"), "a stream ends with [DONE]: {}", a.body);
        a.events()
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect()
    } else {
        a.json()["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
    }
}

async fn calls(mock: &Proc) -> usize {
    received(mock).await.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_answer_is_kept_and_replayed_without_an_upstream_call() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, router) = start(dir.path());
    let first = chat(&router, &request("cached", "What is a router?", false), &[]).await;
    assert_eq!((first.status, first.header("x-switchyard-cache")), (200, Some("miss")), "{}", first.body);
    let mut again = request("cached", "What is a router?", false);
    // Not part of the key: who asks, how it is delivered.
    again["user"] = json!("someone-else");
    again["stream_options"] = json!({"include_usage": false});
    let second = chat(&router, &again, &[]).await;
    assert_eq!((second.status, second.header("x-switchyard-cache")), (200, Some("hit")));
    assert_eq!(second.json(), first.json(), "the same answer");
    assert_eq!(second.header("x-switchyard-attempts"), Some("0"));
    assert_eq!(second.header("x-switchyard-backend"), Some("a"));
    assert_eq!(calls(&mock).await, 1, "the hit made no upstream call");
    let mut with_metadata = request("cached", "What is a router?", false);
    with_metadata["metadata"] = json!({"team": "b"});
    assert_eq!(chat(&router, &with_metadata, &[]).await.header("x-switchyard-cache"), Some("miss"), "metadata tags route too");
    // Part of the key: the messages, the route, and what the policy routes on (tags).
    let other = chat(&router, &request("cached", "What is a switch?", false), &[]).await;
    assert_eq!(other.header("x-switchyard-cache"), Some("miss"));
    let tagged = chat(&router, &request("cached", "What is a router?", false), &[("x-switchyard-tier", "gold")]).await;
    assert_eq!(tagged.header("x-switchyard-cache"), Some("miss"), "another tier may be routed elsewhere");
    let other_route = chat(&router, &request("all", "What is a router?", false), &[]).await;
    assert_eq!(other_route.header("x-switchyard-cache"), Some("miss"));
    // Routes without a cache say nothing about it.
    let plain = chat(&router, &request("uncached", "What is a router?", false), &[]).await;
    assert_eq!(plain.header("x-switchyard-cache"), None);

    let records = support::decision_records(&dir.path().join("decisions.jsonl"), 7).await;
    let caches: Vec<Option<&str>> = records.iter().map(|r| r["cache"].as_str()).collect();
    assert_eq!(caches, [Some("miss"), Some("hit"), Some("miss"), Some("miss"), Some("miss"), Some("miss"), None], "{records:?}");
    assert_eq!(records[1]["attempts"], 0);
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_ref().unwrap())).send().await.unwrap().text().await.unwrap();
    for line in [r#"switchyard_cache_requests_total{result="hit"} 1"#, r#"switchyard_cache_requests_total{result="miss"} 5"#] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(metrics.lines().any(|l| l.starts_with("switchyard_cache_bytes ") && !l.ends_with(" 0")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_replay_with_the_original_content_from_either_form() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, router) = start(dir.path());
    // Streamed, then streamed again, then plain: one upstream call.
    let original = chat(&router, &request("cached", "Tell me about streams.", true), &[]).await;
    assert_eq!(original.header("x-switchyard-cache"), Some("miss"));
    let content = text(&original);
    assert!(!content.is_empty());
    let replayed = chat(&router, &request("cached", "Tell me about streams.", true), &[]).await;
    assert_eq!((replayed.header("x-switchyard-cache"), replayed.header("content-type")), (Some("hit"), Some("text/event-stream")));
    assert_eq!(text(&replayed), content, "the replay's content is the original's, byte for byte");
    let originals: Vec<Value> = original.events().iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
    let replays: Vec<Value> = replayed.events().iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
    assert_eq!(replays, originals, "the same chunks");
    let plain = chat(&router, &request("cached", "Tell me about streams.", false), &[]).await;
    assert_eq!(plain.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(text(&plain), content);
    assert_eq!(plain.json()["choices"][0]["finish_reason"], "stop");
    assert_eq!(calls(&mock).await, 1);

    // Plain first, then a stream made from it, with usage when asked.
    let plain = chat(&router, &request("cached", "Tell me about plains.", false), &[]).await;
    let mut streamed = request("cached", "Tell me about plains.", true);
    streamed["stream_options"] = json!({"include_usage": true});
    let replayed = chat(&router, &streamed, &[]).await;
    assert_eq!(replayed.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(text(&replayed), text(&plain));
    let events: Vec<Value> = replayed.events().iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
    assert_eq!(events.last().unwrap()["usage"], plain.json()["usage"], "the usage chunk comes last");
    assert_eq!(events.iter().filter(|e| e["choices"][0]["finish_reason"] == "stop").count(), 1);
    assert_eq!(calls(&mock).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn who_may_read_and_write_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, router) = start(dir.path());
    let warm = |t: f64| json!({"model": "cached", "temperature": t, "messages": [{"role": "user", "content": "warm"}]});
    let seeded = json!({"model": "cached", "temperature": 0.9, "seed": 7, "messages": [{"role": "user", "content": "seeded"}]});
    let all = json!({"model": "all", "temperature": 0.9, "messages": [{"role": "user", "content": "all"}]});
    /// (what, request, headers, cache header of the first and second call, upstream calls it made)
    type Case<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>, [&'a str; 2], usize);
    let table: Vec<Case> = vec![
        ("not deterministic in the default mode", warm(0.7), vec![], ["skip", "skip"], 2),
        ("a seed is deterministic", seeded, vec![], ["miss", "hit"], 1),
        ("mode all keeps anything", all, vec![], ["miss", "hit"], 1),
        ("the client says no-store", request("cached", "nostore", false), vec![("cache-control", "no-store")], ["skip", "skip"], 2),
        ("the policy labels cache=skip", request("cached", "policy", false), vec![("x-switchyard-cache", "skip")], ["skip", "skip"], 2),
    ];
    for (what, body, headers, expected, upstream_calls) in table {
        support::clear(&mock).await;
        let first = chat(&router, &body, &headers).await;
        let second = chat(&router, &body, &headers).await;
        assert_eq!((first.status, second.status), (200, 200), "{what}");
        assert_eq!([first.header("x-switchyard-cache").unwrap(), second.header("x-switchyard-cache").unwrap()], expected, "{what}");
        assert_eq!(calls(&mock).await, upstream_calls, "{what}");
    }
    // no-cache: not read, but the fresh answer is kept for the next caller.
    support::clear(&mock).await;
    let body = request("cached", "refresh", false);
    let fresh = chat(&router, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(fresh.header("x-switchyard-cache"), Some("skip"));
    let next = chat(&router, &body, &[]).await;
    assert_eq!(next.header("x-switchyard-cache"), Some("hit"));
    assert_eq!(calls(&mock).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_expire_and_large_answers_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, router) = start(dir.path());
    let body = request("short", "expire", false);
    assert_eq!(chat(&router, &body, &[]).await.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(chat(&router, &body, &[]).await.header("x-switchyard-cache"), Some("hit"));
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(chat(&router, &body, &[]).await.header("x-switchyard-cache"), Some("miss"), "past its ttl_s");
    support::clear(&mock).await;
    // An answer over max_entry_bytes (64) is served, never kept.
    for stream in [false, true] {
        let body = request("tiny", "big", stream);
        assert_eq!(chat(&router, &body, &[]).await.header("x-switchyard-cache"), Some("miss"));
        assert_eq!(chat(&router, &body, &[]).await.header("x-switchyard-cache"), Some("miss"));
    }
    assert_eq!(calls(&mock).await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_apis_get_hits_in_their_own_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let (mock, router) = start(dir.path());
    let message = json!({"model": "cached", "max_tokens": 50, "temperature": 0, "messages": [{"role": "user", "content": "Hi there"}]});
    let first = post(&router.url, "/v1/messages", &message, &[]).await;
    assert_eq!((first.status, first.header("x-switchyard-cache")), (200, Some("miss")), "{}", first.body);
    let second = post(&router.url, "/v1/messages", &message, &[]).await;
    assert_eq!(second.header("x-switchyard-cache"), Some("hit"));
    let (a, b) = (first.json(), second.json());
    assert_eq!((b["type"].as_str(), b["role"].as_str()), (Some("message"), Some("assistant")), "{b}");
    assert_eq!(b["content"], a["content"]);
    // Streamed, as the Messages API's events.
    let mut streamed = message.clone();
    streamed["stream"] = json!(true);
    let events = post(&router.url, "/v1/messages", &streamed, &[]).await;
    assert_eq!(events.header("x-switchyard-cache"), Some("hit"));
    for event in ["message_start", "content_block_delta", "message_stop"] {
        assert!(events.body.contains(&format!("event: {event}")), "{event} in {}", events.body);
    }
    // The same words on the chat API are another request (another API's answer shape).
    let chat_first = chat(
        &router,
        &json!({"model": "cached", "max_tokens": 50, "temperature": 0, "messages": [{"role": "user", "content": "Hi there"}]}),
        &[],
    )
    .await;
    assert_eq!(chat_first.header("x-switchyard-cache"), Some("miss"));
    assert_eq!(calls(&mock).await, 2);
}
