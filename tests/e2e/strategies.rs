//! Each example policy, and each kind of route without one, through the
//! running router, against a real mock upstream: what reached which
//! upstream is what the strategy promises.

#[path = "support/mod.rs"]
mod support;

use serde_json::{json, Value};
use support::{clear, mock_upstream, post, received, router, Answer, Proc};
use switchyard_tests::artifacts;

/// A router whose `policies/` holds `policy` (as `<policy>.wasm`) serving
/// model `auto` with `config`, over `backends` (TOML).
/// The router with `policy` on model `auto`. One attempt per target (no
/// retry of the same backend), so the upstream calls are the policy's order.
fn router_with(dir: &std::path::Path, policy: &str, wasm: &str, config: &str, backends: &str) -> Proc {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::copy(wasm, dir.join("policies").join(format!("{policy}.wasm"))).unwrap();
    let toml = format!("[policies]\ndir = \"policies\"\n[policies.config.{policy}]\n{config}\n[[routes]]\nmodel = \"auto\"\npolicy = \"{policy}\"\n[circuit]\nfailure_threshold = 1000\n[retry]\nsame_backend = 0\n{backends}");
    router(dir, &toml, &[])
}

fn backend(name: &str, mock: &Proc, model: &str, extra: &str) -> String {
    format!("[[backends]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"{model}\"\n{extra}\n", mock.url)
}

fn ask(text: &str) -> Value {
    json!({"model": "auto", "messages": [{"role": "user", "content": text}]})
}

fn models_received(got: &[Value]) -> Vec<String> {
    got.iter().map(|r| r["model"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn private_data_never_sends_a_card_number_to_a_public_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let backends = backend("cloud", &mock, "cloud-model", "input_price = 0.1")
        + &backend("onprem", &mock, "onprem-model", "input_price = 1.0\ntags = [\"private\"]");
    let router = router_with(dir.path(), "private-data", artifacts::PRIVATE_DATA, "keywords = [\"nightingale\"]", &backends);
    let sensitive = ["Charge my card 4111 1111 1111 1111 please", "Email bob@example.org the plan", "What is Nightingale?"];
    for text in sensitive {
        let a = post(&router.url, "/v1/chat/completions", &ask(text), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("onprem")), "{text}: {}", a.body);
    }
    let a = post(&router.url, "/v1/chat/completions", &ask("What is the capital of France?"), &[]).await;
    assert_eq!(a.header("x-switchyard-backend"), Some("cloud"));
    // A body goes on as sent, only its model replaced; one that names a key
    // twice goes serialized as the router read it (the last of the two), so
    // that no upstream reads the other one.
    let as_sent = r#"{ "model" : "auto", "messages":[{"role":"user","content":"Capital of It\u0061ly?"}], "temperature" : 0.50 }"#;
    let twice = [
        r#"{"model":"auto","messages":[{"role":"user","content":"Charge my card 4111 1111 1111 1111","content":"Capital of Spain?"}]}"#,
        r#"{"model":"auto","messages":[{"role":"user","content":"Charge my card 4111 1111 1111 1111"}],"messages":[{"role":"user","content":"Capital of Peru?"}]}"#,
    ];
    for body in std::iter::once(as_sent).chain(twice) {
        let response = support::client()
            .post(format!("{}/v1/chat/completions", router.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-switchyard-backend"], "cloud", "{body}");
    }
    let got = received(&mock).await;
    let raw_of = |question: &str| {
        let r = got.iter().find(|r| r["raw"].as_str().unwrap().contains(question)).unwrap_or_else(|| panic!("{question} never came"));
        r["raw"].as_str().unwrap().to_owned()
    };
    assert_eq!(raw_of("It\\u0061ly"), as_sent.replacen(r#""auto""#, r#""cloud-model""#, 1));
    assert_eq!(raw_of("Spain").matches("content").count(), 1, "{}", raw_of("Spain"));
    assert_eq!(raw_of("Peru").matches("messages").count(), 1, "{}", raw_of("Peru"));
    for r in got {
        let body = format!("{} {}", r["body"], r["raw"]);
        if r["model"] == "cloud-model" {
            assert!(!body.contains("4111") && !body.contains("bob@") && !body.contains("Nightingale"), "a public upstream got {body}");
        }
    }

    // Without a private backend, sensitive prompts are refused, never sent.
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(dir.path(), "private-data", artifacts::PRIVATE_DATA, "", &backend("cloud", &mock, "cloud-model", ""));
    clear(&mock).await;
    let a = post(&router.url, "/v1/chat/completions", &ask("card 4111-1111-1111-1111"), &[]).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "rejected_by_policy");
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("sensitive data (card)"));
    assert!(received(&mock).await.is_empty());
}

/// Text that goes upstream outside a message's text parts (tool calls,
/// names, thinking, blocks chat has no form for) is either in the policy's
/// view or counted as cut text, which `private-data` treats as unscanned:
/// on every API, none of it reaches a public upstream.
#[tokio::test(flavor = "multi_thread")]
async fn private_data_sees_text_outside_the_text_parts() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let backends = backend("cloud", &mock, "cloud-model", "input_price = 0.1")
        + &format!("[[backends]]\nname = \"claude\"\nprovider = \"anthropic\"\nbase_url = \"{}/v1\"\napi_key = \"sk-ant-test\"\nmodel = \"claude-model\"\ninput_price = 0.05\n", mock.url)
        + &backend("onprem", &mock, "onprem-model", "input_price = 1.0\ntags = [\"private\"]");
    let router = router_with(dir.path(), "private-data", artifacts::PRIVATE_DATA, "", &backends);
    let e = "john.doe@example.com";
    let user = json!({"role": "user", "content": "Go on."});
    let call = json!({"id": "c1", "type": "function", "function": {"name": "mail", "arguments": format!("{{\"to\":\"{e}\"}}")}});
    let chat = |messages: Value, extra: Value| {
        let mut body = json!({"model": "auto", "messages": messages});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        ("/v1/chat/completions", body)
    };
    let messages = |content: Value| {
        (
            "/v1/messages",
            json!({"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": content}, {"role": "user", "content": "Go on."}]}),
        )
    };
    let user_blocks =
        |content: Value| ("/v1/messages", json!({"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": content}]}));
    let responses = |input: Value| ("/v1/responses", json!({"model": "auto", "input": input}));
    let text = |t: &str| json!({"type": "text", "text": t});
    let cases: Vec<(&str, (&str, Value))> = vec![
        (
            "chat tool call arguments",
            chat(
                json!([{"role": "assistant", "content": null, "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1", "content": "sent"}, user]),
                json!({}),
            ),
        ),
        ("chat message name", chat(json!([{"role": "user", "name": e, "content": "Hello."}]), json!({}))),
        (
            "chat refusal",
            chat(json!([{"role": "assistant", "content": null, "refusal": format!("I will not mail {e}.")}, user]), json!({})),
        ),
        ("chat prediction", chat(json!([user]), json!({"prediction": {"type": "content", "content": e}}))),
        ("messages tool_use input", messages(json!([{"type": "tool_use", "id": "t1", "name": "mail", "input": {"to": e}}]))),
        ("messages thinking", messages(json!([{"type": "thinking", "thinking": format!("Mail {e}."), "signature": "s"}, text("Done.")]))),
        (
            "messages document of content blocks",
            user_blocks(json!([{"type": "document", "source": {"type": "content", "content": [text(e)]}}, text("Summarise.")])),
        ),
        (
            "messages document title",
            user_blocks(
                json!([{"type": "document", "title": e, "source": {"type": "text", "media_type": "text/plain", "data": "Minutes."}}, text("Summarise.")]),
            ),
        ),
        (
            "messages search result",
            user_blocks(json!([{"type": "search_result", "source": "s", "title": "t", "content": [text(e)]}, text("Summarise.")])),
        ),
        ("messages unknown block", user_blocks(json!([{"type": "zzz", "text": e}, text("Summarise.")]))),
        (
            "responses function call arguments",
            responses(
                json!([{"type": "function_call", "call_id": "c1", "name": "mail", "arguments": format!("{{\"to\":\"{e}\"}}")}, {"type": "function_call_output", "call_id": "c1", "output": "sent"}, {"role": "user", "content": "Go on."}]),
            ),
        ),
        (
            "responses reasoning",
            responses(
                json!([{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": e}]}, {"role": "user", "content": "Go on."}]),
            ),
        ),
    ];
    for (case, (path, body)) in &cases {
        let a = post(&router.url, path, body, &[]).await;
        let backend = a.header("x-switchyard-backend").unwrap_or("-");
        // Served privately, or refused: 403 by the policy, or 400 when the
        // private backend cannot take what only Anthropic's API carries.
        assert!((a.status == 200) == (backend == "onprem"), "{case}: {} from {backend}: {}", a.status, a.body);
        assert!([200, 400, 403].contains(&a.status), "{case}: {} from {backend}: {}", a.status, a.body);
    }
    for r in received(&mock).await {
        if r["model"] != "onprem-model" {
            let sent = format!("{} {}", r["body"], r["raw"]);
            assert!(!sent.contains(e), "a public upstream got {sent}");
        }
    }
    // Without the text outside the parts, the same shapes go to the cheapest backend.
    let plain = post(&router.url, "/v1/chat/completions", &json!({"model": "auto", "messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "mail", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "sent"}, {"role": "user", "content": "Go on."}]}), &[]).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert!(matches!(plain.header("x-switchyard-backend"), Some("claude" | "cloud")), "{:?}", plain.headers);
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_moves_traffic_off_a_failing_backend() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let backends = backend("flaky", &mock, "flaky?fault=503", "") + &backend("steady", &mock, "steady", "");
    let router = router_with(dir.path(), "adaptive", artifacts::ADAPTIVE, "explore = 0.0", &backends);
    let mut first_attempt_on_flaky = Vec::new();
    for _ in 0..60 {
        let a = post(&router.url, "/v1/chat/completions", &ask("hi"), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("steady")), "{}", a.body);
        first_attempt_on_flaky.push(a.header("x-switchyard-attempts") == Some("2"));
        // Stats are recomputed at most every 100 ms: pace the requests so the
        // policy sees them change (about 1.2 s in all).
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let early = first_attempt_on_flaky[..10].iter().filter(|x| **x).count();
    let late = first_attempt_on_flaky[40..].iter().filter(|x| **x).count();
    assert!(early >= 1, "flaky was never tried first");
    assert!(late <= 2, "traffic did not move away: {late} of the last 20 tried flaky first");
}

#[tokio::test(flavor = "multi_thread")]
async fn ab_test_is_sticky_per_user_and_labels_the_arm() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let backends = backend("model-a", &mock, "a", "") + &backend("model-b", &mock, "b", "");
    let config =
        "arms = [{ name = \"control\", backend = \"model-a\", weight = 50 }, { name = \"candidate\", backend = \"model-b\", weight = 50 }]";
    let router = router_with(dir.path(), "ab-test", artifacts::AB_TEST, config, &backends);
    let mut arms = std::collections::HashSet::new();
    for u in 0..12 {
        let body = json!({"model": "auto", "user": format!("user-{u}"), "messages": [{"role": "user", "content": "hi"}]});
        let first: Answer = post(&router.url, "/v1/chat/completions", &body, &[]).await;
        let labels = first.header("x-switchyard-labels").unwrap().to_owned();
        assert!(labels.contains("assignment=sticky"), "{labels}");
        for _ in 0..3 {
            let again = post(&router.url, "/v1/chat/completions", &body, &[]).await;
            assert_eq!(again.header("x-switchyard-labels"), Some(labels.as_str()));
            assert_eq!(again.header("x-switchyard-backend"), first.header("x-switchyard-backend"));
        }
        arms.insert(labels);
    }
    assert_eq!(arms.len(), 2, "12 users all landed in one arm: {arms:?}");
}

/// A reload removes a backend that the policy's configuration names: the
/// policy refuses the new configuration and its version serves on. Its
/// choice of the removed backend is skipped (its next target serves) and
/// the decision log says which was skipped (`decision.gone`), so the
/// record is not the policy's decision rewritten.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_the_configuration_no_longer_has_is_skipped_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::copy(artifacts::AB_TEST, dir.path().join("policies/ab.wasm")).unwrap();
    let arms =
        "arms = [{ name = \"control\", backend = \"model-a\", weight = 50 }, { name = \"candidate\", backend = \"model-b\", weight = 50 }]";
    let toml = |b_name: &str| {
        format!(
            "[decision_log]\npath = \"decisions.jsonl\"\n[policies]\ndir = \"policies\"\n[policies.config.ab]\n{arms}\n[[routes]]\nmodel = \"auto\"\npolicy = \"ab\"\n{}{}",
            backend("model-a", &mock, "a", ""),
            backend(b_name, &mock, "b", "")
        )
    };
    let router = router(dir.path(), &toml("model-b"), &[]);
    // A user on the candidate arm (sticky by user).
    let (mut candidate, mut asked) = (None, 0);
    for u in 0..40 {
        asked += 1;
        let body = json!({"model": "auto", "user": format!("user-{u}"), "messages": [{"role": "user", "content": "hi"}]});
        let a = post(&router.url, "/v1/chat/completions", &body, &[]).await;
        if a.header("x-switchyard-labels").unwrap_or_default().contains("arm=candidate") {
            assert_eq!(a.header("x-switchyard-backend"), Some("model-b"));
            candidate = Some(body);
            break;
        }
    }
    let body = candidate.expect("no user on the candidate arm");
    support::replace_file(&dir.path().join("switchyard.toml"), &toml("model-b2"));
    router.until_logged("configuration reloaded", 1).await;
    let a = post(&router.url, "/v1/chat/completions", &body, &[]).await;
    assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("model-a")), "{}", a.body);
    let records = support::decision_records(&dir.path().join("decisions.jsonl"), asked + 1).await;
    let last = records.last().expect("the request's record");
    assert_eq!(last["backend"], "model-a", "{last}");
    assert_eq!(last["decision"]["gone"], json!(["model-b"]), "{last}");
    assert_eq!(last["decision"]["labels"]["arm"], "candidate", "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fallback_cheaper_falls_back_in_price_order() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let backends = backend("premium", &mock, "premium?fault=503", "input_price = 10.0")
        + &backend("mid", &mock, "mid?fault=reset", "input_price = 3.0")
        + &backend("cheap", &mock, "cheap", "input_price = 0.5");
    let router = router_with(dir.path(), "fallback-cheaper", artifacts::FALLBACK_CHEAPER, "primary = \"premium\"", &backends);
    let a = post(&router.url, "/v1/chat/completions", &ask("hi"), &[]).await;
    assert_eq!(
        (a.status, a.header("x-switchyard-backend"), a.header("x-switchyard-attempts")),
        (200, Some("cheap"), Some("3")),
        "{}",
        a.body
    );
    assert_eq!(models_received(&received(&mock).await), ["premium?fault=503", "mid?fault=reset", "cheap"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn content_aware_routes_by_what_the_prompt_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let backends = backend("vision", &mock, "vision", "input_price = 2.0\ncapabilities = { vision = true, stream = true }")
        + &backend("coder", &mock, "coder", "input_price = 1.0")
        + &backend("small", &mock, "small", "input_price = 0.1");
    let config = "specialist = \"coder\"\ncheap = \"small\"\ntiers = { free = [\"small\"] }";
    let router = router_with(dir.path(), "content-aware", artifacts::CONTENT_AWARE, config, &backends);
    let image = json!({"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    let cases = [
        (image, vec![], "vision"),
        (ask("Why does ```fn main() { panic!() }``` crash?"), vec![], "coder"),
        (ask("Hello!"), vec![], "small"),
        (ask("Why does ```fn main() { panic!() }``` crash?"), vec![("x-switchyard-tier", "free")], "small"),
    ];
    for (body, headers, expected) in cases {
        let a = post(&router.url, "/v1/chat/completions", &body, &headers).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some(expected)), "{body}: {}", a.body);
    }
}

/// Routes without a policy: `targets` tries its backends in order (the
/// failing first one, retried once as transient, then the next); `split`
/// sends each caller to one backend by weight, the same one every time,
/// with the others as fallbacks.
#[tokio::test(flavor = "multi_thread")]
async fn declarative_routes_fall_back_in_order_and_split_by_weight_stickily() {
    use futures_util::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[[routes]]\nmodel = \"ordered\"\ntargets = [\"failing\", \"good\"]\n[[routes]]\nmodel = \"ninety-ten\"\nsplit = [{{ backend = \"a\", weight = 90 }}, {{ backend = \"b\", weight = 10 }}]\n{}{}[[backends]]\nname = \"a\"\nprovider = \"mock\"\n[[backends]]\nname = \"b\"\nprovider = \"mock\"\n",
        backend("failing", &mock, "failing?fault=503", "input_price = 0.1"),
        backend("good", &mock, "good", "input_price = 9.0"),
    );
    let router = router(dir.path(), &config, &[]);
    let a =
        post(&router.url, "/v1/chat/completions", &json!({"model": "ordered", "messages": [{"role": "user", "content": "hi"}]}), &[]).await;
    assert_eq!(
        (a.status, a.header("x-switchyard-backend"), a.header("x-switchyard-policy")),
        (200, Some("good"), Some("targets")),
        "{}",
        a.body
    );
    assert_eq!(models_received(&received(&mock).await), ["failing?fault=503", "failing?fault=503", "good"]);

    // 10,000 callers: about 90 % on `a`.
    let ask = |user: String| {
        let url = router.url.clone();
        async move {
            let body = json!({"model": "ninety-ten", "user": user, "messages": [{"role": "user", "content": "hi"}]});
            let a = post(&url, "/v1/chat/completions", &body, &[]).await;
            assert_eq!(a.status, 200, "{}", a.body);
            assert!(a.header("x-switchyard-labels").unwrap().contains("assignment=sticky"));
            a.header("x-switchyard-backend").unwrap().to_owned()
        }
    };
    let backends: Vec<String> = futures_util::stream::iter((0..10_000).map(|i| ask(format!("user-{i}")))).buffered(32).collect().await;
    let on_a = backends.iter().filter(|b| *b == "a").count();
    // Binomial: 9000 ± 30; 4 standard deviations.
    assert!((8880..=9120).contains(&on_a), "{on_a} of 10000 callers on `a`");
    for i in [0, 1, 2, 3, 4, 5, 6, 7] {
        for _ in 0..3 {
            assert_eq!(ask(format!("user-{i}")).await, backends[i], "user-{i} kept its backend");
        }
    }
}

/// Two routes share one policy file, each with its own `policy_config`,
/// and decide differently; a reload that changes one route's config
/// reloads that route's instance alone, and a config the policy refuses
/// leaves the last good one serving.
#[tokio::test(flavor = "multi_thread")]
async fn routes_share_a_policy_file_with_their_own_configs_and_reload_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::copy(artifacts::FALLBACK_CHEAPER, dir.path().join("policies/fallback-cheaper.wasm")).unwrap();
    let config = |first: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"admin-token-0123456789\"\n[policies]\ndir = \"policies\"\n[[routes]]\nmodel = \"one\"\npolicy = \"fallback-cheaper\"\npolicy_config = {{ primary = \"{first}\" }}\n[[routes]]\nmodel = \"two\"\npolicy = \"fallback-cheaper\"\npolicy_config = {{ primary = \"b\" }}\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\ninput_price = 1.0\n[[backends]]\nname = \"b\"\nprovider = \"mock\"\ninput_price = 2.0\n[[backends]]\nname = \"c\"\nprovider = \"mock\"\ninput_price = 3.0\n"
        )
    };
    let router = router(dir.path(), &config("a"), &[]);
    let first = |model: &'static str| {
        let url = router.url.clone();
        async move {
            let a =
                post(&url, "/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}), &[]).await;
            assert_eq!(a.status, 200, "{}", a.body);
            a.header("x-switchyard-backend").unwrap().to_owned()
        }
    };
    assert_eq!((first("one").await, first("two").await), ("a".to_owned(), "b".to_owned()));
    let admin = router.admin_url.clone().unwrap();
    let loads = || async {
        let policies = support::admin_json(&admin, "/admin/policies", "admin-token-0123456789").await;
        let mut loads: Vec<(String, u64)> = policies["policies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"].as_str().unwrap().starts_with("fallback-cheaper~"))
            .map(|p| (p["name"].as_str().unwrap().to_owned(), p["loads"].as_u64().unwrap()))
            .collect();
        loads.sort();
        loads
    };
    let before = loads().await;
    assert_eq!(before.len(), 2, "one instance per route config: {before:?}");

    support::replace_file(&dir.path().join("switchyard.toml"), &config("c"));
    let started = std::time::Instant::now();
    while first("one").await != "c" {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the new policy_config was not applied");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(first("two").await, "b");
    let after = loads().await;
    // Route two's instance is the same one, loaded once; route one's was reloaded.
    assert_eq!(after, [("fallback-cheaper~one".to_owned(), 2), ("fallback-cheaper~two".to_owned(), 1)], "before {before:?}");

    // A config the policy refuses (no such primary): route one keeps its last good one.
    std::fs::write(dir.path().join("switchyard.toml"), config("nope")).unwrap();
    let failed = || async {
        let policies = support::admin_json(&admin, "/admin/policies", "admin-token-0123456789").await;
        let one = policies["policies"].as_array().unwrap().iter().find(|p| p["name"] == "fallback-cheaper~one").cloned().unwrap();
        one["failed_loads"].as_u64().unwrap()
    };
    let started = std::time::Instant::now();
    while failed().await == 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the refused policy_config was never tried");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((first("one").await, first("two").await), ("c".to_owned(), "b".to_owned()), "the last good config serves");
}

/// The learned router through the router: the score and the reason are
/// labelled, and the threshold decides which model answers first.
#[tokio::test(flavor = "multi_thread")]
async fn quality_router_sends_a_prompt_by_its_score() {
    let question = "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:";
    for (share, first, reason) in [("1.0", "strong", "predicted-benefit"), ("0.0", "cheap", "below-threshold")] {
        let dir = tempfile::tempdir().unwrap();
        let mock = mock_upstream(dir.path());
        let backends =
            backend("strong", &mock, "strong-model", "input_price = 10.0") + &backend("cheap", &mock, "cheap-model", "input_price = 0.5");
        let config = format!("strong = \"strong\"\ncheap = \"cheap\"\nstrong_share = {share}");
        let router = router_with(dir.path(), "quality-router", artifacts::QUALITY_ROUTER, &config, &backends);
        let a = post(&router.url, "/v1/chat/completions", &ask(question), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some(first)), "share {share}: {}", a.body);
        let labels = a.header("x-switchyard-labels").unwrap();
        assert!(labels.contains(&format!("reason={reason}")) && labels.contains("score=") && labels.contains("model="), "{labels}");
        assert_eq!(models_received(&received(&mock).await), [format!("{first}-model")]);
    }
}
