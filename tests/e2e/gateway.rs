//! The router end to end: the real `switchyard serve` process, a real mock
//! upstream on its own port, real compiled policies, over HTTP.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{chat, mock_upstream, post, received, router};
use switchyard_tests::artifacts;

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

    // One model, as `client.models.retrieve` asks; without `/v1` too, for clients configured with a bare host.
    let http = support::client();
    for (path, status) in [("/v1/models/auto", 200), ("/models/m", 200), ("/v1/models/no-such-model", 404)] {
        let r = http.get(format!("{}{path}", router.url)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: Value = r.json().await.unwrap();
        match status {
            200 => assert_eq!(body["id"], path.rsplit('/').next().unwrap(), "{path}: {body}"),
            _ => assert_eq!(body["error"]["code"], "model_not_found", "{path}: {body}"),
        }
    }
    let a = post(&router.url, "/chat/completions", &chat("auto", false), &[]).await;
    assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("m")), "{}", a.body);
    let a = post(&router.url, "/v1/models/auto", &chat("auto", false), &[]).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("GET")), "{}", a.body);
    let get = support::client().get(format!("{}/v1/chat/completions", router.url)).send().await.unwrap();
    assert_eq!((get.status().as_u16(), get.headers().get("allow").and_then(|v| v.to_str().ok())), (405, Some("POST")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_is_hot_reloaded_and_a_broken_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let router = router(dir.path(), base, &[]);
    let path = dir.path().join("switchyard.toml");
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("fresh-route", false), &[]).await.status, 404);

    let write = |text: &str| support::replace_file(&path, text);
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
    // A reload that names a policy that does not exist says so.
    write(&format!("{base}[[routes]]\nmodel = \"fresh-route\"\npolicy = \"cheapest-healthy\"\n[[routes]]\nmodel = \"ghost\"\npolicy = \"ghost-policy\"\n"));
    router.until_logged("route `ghost` names policy `ghost-policy`", 1).await;
    assert!(!router.logs().contains("RescanReport"), "a reload logs its report as fields:\n{}", router.logs());
    write("[[backends]]\nname = \"m\"\nprovider = \"bogus\"\n");
    router.until_logged("configuration not reloaded", 1).await;
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("fresh-route", false), &[]).await.status, 200);
    assert!(router.logs().contains("unknown variant `bogus`"));
}

/// A reload keeps the clients of backends it did not change: their pooled
/// connections serve on (the mock sees the same client port), while a
/// changed backend gets a new client.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_connections_of_unchanged_backends() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[[backends]]\nname = \"kept\"\nprovider = \"openai\"\nbase_url = \"{m}/v1\"\n[[backends]]\nname = \"changed\"\nprovider = \"openai\"\nbase_url = \"{m}/v1\"\ntimeout_ms = 5000\n",
        m = mock.url
    );
    let router = router(dir.path(), &config, &[]);
    let peers = || async {
        let got = received(&mock).await;
        let peer = |name: &str| got.iter().rev().find(|r| r["model"] == name).unwrap()["peer"].as_str().unwrap().to_owned();
        (peer("kept"), peer("changed"))
    };
    for model in ["kept", "changed"] {
        assert_eq!(post(&router.url, "/v1/chat/completions", &chat(model, false), &[]).await.status, 200);
    }
    let before = peers().await;

    support::replace_file(&dir.path().join("switchyard.toml"), &config.replace("timeout_ms = 5000", "timeout_ms = 6000"));
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if router.logs().contains("configuration reloaded") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no reload:\n{}", router.logs());
    }
    for model in ["kept", "changed"] {
        assert_eq!(post(&router.url, "/v1/chat/completions", &chat(model, false), &[]).await.status, 200);
    }
    let after = peers().await;
    assert_eq!(after.0, before.0, "the unchanged backend opened a new connection");
    assert_ne!(after.1, before.1, "the changed backend kept its old client");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n[[backends]]\nname = \"slow\"\nprovider = \"mock\"\nmock = { ttft_ms = 100, tokens_per_second = 20, answer_tokens = 40 }\n";
    let mut router = router(dir.path(), config, &[]);
    let (url, admin) = (router.url.clone(), router.admin_url.clone().expect("no admin listener"));
    let http = support::client();
    let ready = |http: reqwest::Client| {
        let admin = admin.clone();
        async move {
            let r = http.get(format!("{admin}/readyz")).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = ready(http.clone()).await;
    assert_eq!((status, &body["draining"]), (200, &json!(false)), "{body}");
    // Its headers come once the stream has begun.
    let stream = http.post(format!("{url}/v1/chat/completions")).json(&chat("slow", true)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    router.signal("-TERM");
    // While the stream drains: not ready (load balancers stop sending), metrics
    // still scraped, and no new API connection accepted.
    let started = Instant::now();
    loop {
        let (status, body) = ready(http.clone()).await;
        if status == 503 {
            assert_eq!(body["draining"], true, "{body}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "/readyz never turned 503: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http.get(format!("{admin}/metrics")).send().await.unwrap().status(), 200);
    // The listener closes a moment after draining begins.
    let started = Instant::now();
    while reqwest::Client::new().get(format!("{}/healthz", router.url)).send().await.is_ok() {
        assert!(started.elapsed() < Duration::from_secs(5), "new API connections are still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = stream.text().await.unwrap();
    let last = body.lines().rev().find_map(|l| l.strip_prefix("data: "));
    assert_eq!(last, Some("[DONE]"), "{body}");
    let status = tokio::task::spawn_blocking(move || router.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// A new version of a policy compiles only the functions the node has not
/// compiled before: the same code under a new digest (a custom section
/// added) reuses nearly all; with `function_cache_mib = 0` there is no cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_reuses_the_compiled_functions_it_shares() {
    let counts = |metrics: &str| -> Option<(u64, u64)> {
        let value = |result: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("switchyard_policy_compiled_functions_total{{result=\"{result}\"}} ")))
                .map(|v| v.parse::<u64>().unwrap())
        };
        Some((value("compiled")?, value("reused")?))
    };
    for cache_mib in [64, 0] {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        let base = std::fs::read(artifacts::CHEAPEST_HEALTHY).unwrap();
        std::fs::write(policies.join("p.wasm"), &base).unwrap();
        let config = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[policies]\ndir = \"policies\"\nfunction_cache_mib = {cache_mib}\n[[routes]]\nmodel = \"auto\"\npolicy = \"p\"\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n"
        );
        let router = router(dir.path(), &config, &[]);
        let metrics_url = format!("{}/metrics", router.admin_url.as_deref().unwrap());
        let metrics = || async { support::client().get(&metrics_url).send().await.unwrap().text().await.unwrap() };
        // A custom section: new bytes (a new digest, never compiled before,
        // so no compiled artifact on disk), the same code.
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos().to_le_bytes();
        let version = |tag: u8| {
            let (name, payload) = (b"switchyard-test".as_slice(), [&nonce[..], &[tag]].concat());
            let mut v = base.clone();
            v.extend_from_slice(&[0, u8::try_from(1 + name.len() + payload.len()).unwrap(), u8::try_from(name.len()).unwrap()]);
            v.extend_from_slice(name);
            v.extend_from_slice(&payload);
            v
        };
        let mut seen = Vec::new();
        for tag in [2, 3] {
            let serving =
                post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await.header("x-switchyard-policy").map(str::to_owned);
            std::fs::write(policies.join(".p.wasm.tmp"), version(tag)).unwrap();
            std::fs::rename(policies.join(".p.wasm.tmp"), policies.join("p.wasm")).unwrap();
            let started = Instant::now();
            loop {
                let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
                assert_eq!(a.status, 200, "{}", a.body);
                if a.header("x-switchyard-policy").map(str::to_owned) != serving {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(20), "version {tag} never served:\n{}", router.logs());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen.push(counts(&metrics().await));
        }
        match cache_mib {
            0 => assert_eq!(seen, [None, None], "no function cache, no counts"),
            _ => {
                let [Some((compiled, reused)), Some((compiled_after, reused_after))] = seen[..] else { panic!("no counts: {seen:?}") };
                assert!(compiled > 100, "the second version compiled its functions: {compiled}");
                // Same code: most reused (about 9 in 10 here; some of the
                // component's glue is compiled for each component).
                let (new, again) = (compiled_after - compiled, reused_after - reused);
                assert!(again >= 100 && again >= 5 * new, "the third compiled {new} functions anew and reused {again}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_serves_offline() {
    let dir = tempfile::tempdir().unwrap();
    let router = support::Proc::start(&["serve", "--listen", "127.0.0.1:0"], dir.path(), &[]);
    // The very first request after start is decided by the policy (warm instances are ready at load).
    let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("x-switchyard-policy").unwrap().starts_with("cheapest-healthy@"));
    assert_eq!(a.header("x-switchyard-labels"), Some("reason=cheapest"));
    assert!(a.json()["choices"][0]["message"]["content"].as_str().unwrap().starts_with("This is a mock answer"));
    // The catch-all route serves any other model name with the same policy.
    let a = post(&router.url, "/v1/chat/completions", &chat("some-model", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("x-switchyard-policy").unwrap().starts_with("cheapest-healthy@"));
    // Logs to a file are plain text, without terminal colours.
    assert!(!router.logs().contains('\u{1b}'), "{}", router.logs());
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
    // `server.max_headers` (100 by default) holds over HTTP/2 too, with the API's error JSON.
    let mut many = h2.post(format!("{}/v1/chat/completions", router.url)).json(&chat("m", false));
    for i in 0..120 {
        many = many.header(format!("x-h{i}"), "v");
    }
    let response = many.send().await.unwrap();
    assert_eq!(response.status(), 431);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "too_many_headers", "{error}");
}

/// A backend with `h2c = true` gets HTTP/2 over plain TCP: every request in
/// flight to it, streams included, shares one connection (over HTTP/1.1
/// each takes its own).
#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_backend_carries_every_request_in_flight_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[[backends]]\nname = \"h2\"\nprovider = \"openai\"\nbase_url = \"{m}/v1\"\nmodel = \"gpt?gap_ms=20\"\nh2c = true\n\
         [[backends]]\nname = \"h1\"\nprovider = \"openai\"\nbase_url = \"{m}/v1\"\nmodel = \"gpt?gap_ms=20\"\n",
        m = mock.url
    );
    let router = router(dir.path(), &config, &[]);
    for backend in ["h2", "h1"] {
        // Eight streams at once, and plain requests beside them.
        let calls = (0..12).map(|i| {
            let url = router.url.clone();
            tokio::spawn(async move { post(&url, "/v1/chat/completions", &chat(backend, i % 3 != 0), &[]).await })
        });
        let calls: Vec<_> = calls.collect();
        for call in calls {
            let answer = call.await.unwrap();
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert!(answer.body.contains("data: [DONE]") || answer.body.contains("chat.completion"), "{}", answer.body);
        }
    }
    let got = received(&mock).await;
    assert_eq!(got.len(), 24, "{got:?}");
    // (requests, connections) by the protocol they came over.
    let by = |version: &str| {
        let records: Vec<&Value> = got.iter().filter(|r| r["http"] == version).collect();
        let peers: std::collections::BTreeSet<&str> = records.iter().map(|r| r["peer"].as_str().unwrap()).collect();
        (records.len(), peers.len())
    };
    assert_eq!(by("HTTP/2.0"), (12, 1), "{got:?}");
    let (requests, connections) = by("HTTP/1.1");
    assert!(requests == 12 && connections > 2, "HTTP/1.1: {requests} requests on {connections} connections");
}

/// `h2c = true` against an upstream that speaks only HTTP/1.1 (it answers
/// HTTP/2's preface with a 400 and closes, as an HTTP/1.1-only server does):
/// each attempt fails as a connection failure whose error names no URL, and
/// a policy's route fails over to the next backend.
#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_backend_that_speaks_only_http1_fails_over() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http1_only = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut preface = [0u8; 1024];
                if socket.read(&mut preface).await.is_ok() {
                    let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").await;
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[retry]\nbackoff_ms = 0\n\
         [[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n\
         [[backends]]\nname = \"h1-only\"\nprovider = \"openai\"\nbase_url = \"{http1_only}/v1\"\nmodel = \"m\"\nh2c = true\ninput_price = 1.0\n\
         [[backends]]\nname = \"good\"\nprovider = \"openai\"\nbase_url = \"{m}/v1\"\nmodel = \"good-model\"\ninput_price = 50.0\n",
        m = mock.url
    );
    let router = router(dir.path(), &config, &[]);
    // Named directly: the only target, so the attempt's failure is the answer.
    let a = post(&router.url, "/v1/chat/completions", &chat("h1-only", false), &[]).await;
    assert_eq!(a.status, 502, "{}", a.body);
    let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("connection failed") && !message.contains("127.0.0.1"), "{message}");
    assert!(connections.load(Ordering::SeqCst) > 0, "the h2c backend was never tried");
    // Through the policy: the cheap backend fails, `good` answers, plain and streamed.
    for stream in [false, true] {
        let a = post(&router.url, "/v1/chat/completions", &chat("auto", stream), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("good")), "stream {stream}: {}", a.body);
        assert_eq!(a.header("x-switchyard-attempts"), Some("2"), "stream {stream}");
    }
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
    let denied = http.get(format!("{admin}/admin/policies")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let denied: Value = denied.json().await.unwrap();
    assert_eq!(denied["error"]["code"], "invalid_admin_token", "{denied}");
    assert!(denied["error"]["message"].as_str().unwrap().contains("admin token"), "{denied}");
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
    // A reload re-reads the file: a broken one is refused with its key and
    // problem, and the configuration serving now stays.
    let file = dir.path().join("switchyard.toml");
    std::fs::write(&file, config.replace("input_price = 2.0", "input_price = \"two\"")).unwrap();
    let reload = http.post(format!("{admin}/admin/reload")).header("authorization", bearer).send().await.unwrap();
    assert_eq!(reload.status(), 422);
    let message = reload.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("switchyard.toml") && message.contains("input_price"), "{message}");
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await.status, 200);
    std::fs::write(&file, config.replace("model = \"auto\"", "model = \"auto-2\"")).unwrap();
    let reload: Value =
        http.post(format!("{admin}/admin/reload")).header("authorization", bearer).send().await.unwrap().json().await.unwrap();
    assert_eq!(reload["config_reloaded"], true, "{reload}");
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("auto-2", false), &[]).await.status, 200);
    std::fs::write(&file, &config).unwrap();
    let reload = http.post(format!("{admin}/admin/reload")).header("authorization", bearer).send().await.unwrap();
    assert_eq!(reload.status(), 200);
    assert!(!router.logs().contains("admin-token-0123456789"));
    // The scheme's name in any case; a known path with another method is a 405 that says which.
    let lower = http.get(format!("{admin}/admin/policies")).header("authorization", "bearer admin-token-0123456789").send().await.unwrap();
    assert_eq!(lower.status(), 200);
    for (method, path, allow) in [("GET", "/admin/reload", "POST"), ("POST", "/metrics", "GET"), ("DELETE", "/admin/backends", "GET")] {
        let r = http.request(method.parse().unwrap(), format!("{admin}{path}")).header("authorization", bearer).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers().get("allow").and_then(|v| v.to_str().ok())), (405, Some(allow)), "{method} {path}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "invalid_request_error");
    }
    // A rotated token applies once the file is reloaded (by its watcher
    // here): the old one is refused from then on.
    let accepts = |token: &'static str| {
        let (http, admin) = (http.clone(), admin.clone());
        async move {
            let started = Instant::now();
            loop {
                let r =
                    http.get(format!("{admin}/admin/policies")).header("authorization", format!("Bearer {token}")).send().await.unwrap();
                if r.status() == 200 {
                    return;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "`{token}` never accepted: {}", r.status());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    support::replace_file(&file, &config.replace("${ADMIN_TOKEN}", "admin-token-rotated-98765"));
    accepts("admin-token-rotated-98765").await;
    let old = http.get(format!("{admin}/admin/policies")).header("authorization", bearer).send().await.unwrap();
    assert_eq!(old.status(), 401, "the old admin token still works after its rotation");
    support::replace_file(&file, &config);
    accepts("admin-token-0123456789").await;

    // Model names that only the catch-all route serves do not become label
    // values: a client cannot grow the metric series.
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("random-name-123", false), &[]).await.status, 200);
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"switchyard_requests_total{model="other",backend="up",policy="cheapest-healthy",status="200",arm=""} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("random-name-123"));

    // A request the policy refuses (an image, and no backend has vision).
    let image = json!({"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    let refused = post(&router.url, "/v1/chat/completions", &image, &[]).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "rejected_by_policy");
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"switchyard_requests_total{model="auto",backend="none",policy="cheapest-healthy",status="400",arm=""} 1"#),
        "{metrics}"
    );

    // The decision log: one line per routed request, with what the policy
    // saw and decided, and no prompt text unless configured.
    let path = dir.path().join("decisions.jsonl");
    let records = support::decision_records(&path, 6).await;
    assert_eq!(records.len(), 6, "{records:?}");
    // A stream's record is written when it ends, with its tokens.
    let streamed = records.iter().find(|r| r["request"]["stream"] == true).unwrap();
    assert_eq!(streamed["stream"]["end"], "done", "{streamed}");
    assert_eq!(streamed["tokens"]["output"], 16, "{streamed}");
    // A refusal is recorded with the policy's reason and no attempt.
    let rejected = records.iter().find(|r| r["status"] == 400).unwrap();
    assert_eq!(rejected["decision"]["reject"]["status"], 400, "{rejected}");
    assert!(rejected["decision"]["reject"]["message"].as_str().unwrap().contains("vision"), "{rejected}");
    assert_eq!((rejected["attempts"].as_u64(), rejected["backend"].is_null()), (Some(0), true));
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

/// With `[telemetry] otlp_endpoint`, spans go to the collector over
/// OTLP/HTTP: the caller's trace continues through the router (request,
/// policy, attempt and stream spans) and on to the upstream's
/// `traceparent`. The mock upstream is the collector here.
#[tokio::test(flavor = "multi_thread")]
async fn traces_are_exported_over_otlp_and_continue_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{m}/v1/traces\"\nservice_name = \"edge-router-7\"\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"up\"\nprovider = \"openai\"\nbase_url = \"{m}/v1\"\nmodel = \"up-model\"\n",
        m = mock.url
    );
    let mut router = router(dir.path(), &config, &[]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    for stream in [false, true] {
        let a = post(&router.url, "/v1/chat/completions", &chat("auto", stream), &[("traceparent", &traceparent)]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let calls: Vec<Value> = received(&mock).await.into_iter().filter(|r| r["path"] == "/v1/chat/completions").collect();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        let sent = call["traceparent"].as_str().expect("no traceparent upstream");
        assert!(sent.starts_with(&format!("00-{trace_id}-")), "{sent}");
        assert!(!sent.contains("00f067aa0ba902b7"), "the upstream's parent is the attempt span, not the caller's");
    }

    // Shutting down flushes the queued spans.
    assert!(router.terminate().success());
    let exported: String =
        received(&mock).await.iter().filter(|r| r["path"] == "/v1/traces").map(|r| r["otlp_hex"].as_str().unwrap().to_owned()).collect();
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(exported.contains(trace_id), "the caller's trace id is not in the export");
    for expected in ["edge-router-7", "request", "policy.decide", "upstream.attempt", "stream.relay", "switchyard.backend", "up-model"] {
        assert!(exported.contains(&hex(expected)), "`{expected}` is not in the exported spans");
    }
}

/// Every connection is bounded: past `max_connections` a client gets a 503
/// at once; a connection that stays silent, or sends its headers (or the
/// HTTP/2 preface) or body too slowly, is closed (with a 408 for a body),
/// and the slots come back.
#[tokio::test(flavor = "multi_thread")]
async fn connections_and_slow_clients_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let config = "[server]\nmax_connections = 3\nheader_timeout_ms = 1000\nbody_timeout_ms = 1000\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let router = router(dir.path(), config, &[]);
    let addr = router.url.trim_start_matches("http://").to_owned();
    // (Timeouts of 1 s: the over-the-cap connection must come while the
    // silent ones still hold their slots, on a busy machine too.)
    // What the router sends on `stream` until it closes it (or 8 s pass).
    async fn until_closed(stream: &mut TcpStream) -> (String, Duration) {
        let started = Instant::now();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut got)).await;
        (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
    }

    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut over = TcpStream::connect(&addr).await.unwrap();
    let (answer, _) = until_closed(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"), "{answer}");
    // The silent ones are closed after the header timeout, which frees their slots.
    for stream in &mut silent {
        let (answer, took) = until_closed(stream).await;
        assert!(took < Duration::from_secs(4), "a silent connection stayed open {took:?}: {answer}");
    }
    let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);

    // Headers that trickle in: closed after the header timeout.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let (_, took) = until_closed(&mut slow).await;
    assert!(took < Duration::from_secs(4), "headers trickled for {took:?}");
    // The start of the HTTP/2 preface, then silence: closed after the header timeout too.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"PRI * HTTP/2").await.unwrap();
    let (answer, took) = until_closed(&mut slow).await;
    assert!(took < Duration::from_secs(4), "a part of the HTTP/2 preface held a connection for {took:?}: {answer}");
    // A body that stops: 408 after the body timeout.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let (answer, took) = until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"), "{answer}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // The router serves on.
    let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// A streaming client that stops reading is cut off after
/// `stream_write_timeout_ms`: the upstream stream is dropped, the
/// backend's in-flight count goes back to 0, an HTTP/1.1 client's
/// connection is closed and an HTTP/2 stream is reset.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_client_stops_reading_is_ended_and_released() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    // An in-process mock backend with an answer far larger than the socket buffers.
    let config = "[server]\nstream_write_timeout_ms = 300\n[admin]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\nmock = { latency_ms = 0, ttft_ms = 0, tokens_per_second = 0, answer_tokens = 400000 }\n";
    let router = router(dir.path(), config, &[]);
    let admin = router.admin_url.clone().unwrap();
    let in_flight = || async {
        let metrics = support::client().get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
        metrics.lines().find_map(|l| l.strip_prefix("switchyard_in_flight{backend=\"m\"} ")).map(|v| v.trim().to_owned())
    };
    let body = serde_json::to_string(&chat("auto", true)).unwrap();
    let mut client = tokio::net::TcpStream::connect(router.url.trim_start_matches("http://")).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    // The client never reads: the stream is ended (the `n`th so far), then
    // the backend's in-flight count goes back to 0.
    let (in_flight, router_ref) = (&in_flight, &router);
    let released = move |over: &'static str, n: usize| async move {
        router_ref.until_logged("client stopped reading the stream", n).await;
        let started = Instant::now();
        loop {
            let now = in_flight().await;
            if now.as_deref() == Some("0") {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{over}, in flight: {now:?}\n{}", router_ref.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    released("HTTP/1.1", 1).await;
    // And its connection is closed: reading again, the client gets what was
    // sent, then the connection's end, not a last chunk that would make the
    // cut stream look whole (before, hyper ended the response cleanly once
    // the client read again and kept the connection open).
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection stayed open after its stream was ended ({} bytes read)", got.len());
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..got.len().min(200)]));
    assert!(!got.ends_with(b"\r\n0\r\n\r\n") && !got.ends_with(b"[DONE]\n\n"), "the cut stream ended like a whole one");
    drop(client);
    let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);

    // The same over HTTP/2, where the stream's flow-control window, not the
    // connection, fills: the connection stays writable, the stream does not.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2.post(format!("{}/v1/chat/completions", router.url)).json(&chat("auto", true)).send().await.unwrap();
    assert_eq!((response.version(), response.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    released("HTTP/2", 2).await;
    // Read again, the stream is reset after what was sent, not ended as if whole.
    let rest = tokio::time::timeout(Duration::from_secs(10), response.bytes()).await.expect("the cut stream never ended");
    assert!(rest.is_err(), "the cut HTTP/2 stream ended like a whole one ({} bytes)", rest.map(|b| b.len()).unwrap_or(0));
}

/// The router raises its soft limit on open files to the hard one, and
/// where the hard limit is too low for `max_connections` it serves fewer at
/// once, with a warning: the connections past them get the 503 of a full
/// server (before, accepting failed once descriptors ran out, and those
/// clients got no answer at all).
#[tokio::test(flavor = "multi_thread")]
async fn the_open_file_limit_is_raised_and_bounds_the_connections() {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let config = "[server]\nheader_timeout_ms = 20000\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let args = ["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let open_files = |pid: u32| {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
        let numbers: Vec<String> = line.split_whitespace().skip(3).take(2).map(str::to_owned).collect();
        (numbers[0].clone(), numbers[1].clone())
    };

    // A low soft limit under a higher hard one: raised to the hard one.
    let raised = support::Proc::start_with_open_files("-Sn 300", &args, dir.path(), &[]);
    let (soft, hard) = open_files(raised.pid());
    assert_ne!(soft, "300", "{soft} {hard}");
    assert_eq!(soft, hard);
    drop(raised);

    // A hard limit of 300: 70 connections at once ((300 - 160) / 2).
    let router = support::Proc::start_with_open_files("-n 300", &args, dir.path(), &[]);
    let logs = router.logs();
    let line = logs.lines().find(|l| l.contains("server.max_connections is 10000 but the open-file limit (300) allows 70"));
    assert!(line.is_some_and(|l| l.contains("WARN")), "a cut that large is a warning: {logs}");
    let addr = router.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..70 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..100 {
        let mut over = TcpStream::connect(&addr).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), over.read_to_end(&mut answer)).await.expect("no answer past the limit").unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"), "{answer}");
    }
    drop(held);
    let started = Instant::now();
    loop {
        let a = post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await;
        if a.status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{} {}", a.status, a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Memory a burst of streams took goes back to the system once they have
/// ended, with no traffic after them: an idle router used to keep nearly
/// all of it (its allocator returns memory only from within its own calls).
#[tokio::test(flavor = "multi_thread")]
async fn memory_a_burst_of_streams_took_is_returned_when_it_ends() {
    const STREAMS: usize = 1000;
    // Some 1,000 descriptors here and in the mock, 2,000 in the router (which
    // raises its own limit): a soft limit of 1,024 is raised for this process
    // and the mock, which inherits it.
    let open_files = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        open_files >= 4 * STREAMS as u64,
        "the hard limit on open files ({open_files}) is too low for this test: raise it (ulimit -Hn)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let config = format!(
        "[server]\nmax_connections = 4000\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"slow\"\nprovider = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"gpt-slow?gap_ms=100\"\n",
        mock.url
    );
    let router = router(dir.path(), &config, &[]);
    let resident_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", router.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    let a = post(&router.url, "/v1/chat/completions", &chat("auto", true), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let idle = resident_kib();

    // STREAMS streams at once, each about 2 s long (events 100 ms apart).
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let body = chat("auto", true);
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| {
            let request = client.post(format!("{}/v1/chat/completions", router.url)).json(&body);
            tokio::spawn(async move {
                let response = request.send().await.ok()?;
                let status = response.status().as_u16();
                response.bytes().await.ok()?;
                Some(status)
            })
        })
        .collect();
    let mut busy = idle;
    while !streams.iter().all(|s| s.is_finished()) {
        busy = busy.max(resident_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut statuses = Vec::new();
    for stream in streams {
        statuses.push(stream.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == Some(200)), "{:?}", statuses.iter().filter(|s| **s != Some(200)).take(3).collect::<Vec<_>>());
    drop(client);
    let grew = busy.saturating_sub(idle);
    assert!(grew > 8 * 1024, "{STREAMS} streams took only {grew} KiB: the test shows nothing");

    // Within a few seconds of the last stream, most of it is back (the
    // upstream pool keeps some idle connections, and so some of it, on purpose).
    let started = Instant::now();
    loop {
        let now = resident_kib();
        if now <= idle + grew / 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "idle {idle} KiB, {busy} KiB under {STREAMS} streams, still {now} KiB {:?} after they ended",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A stream that runs past `stream_max_duration_ms` ends with an error
/// event (never `[DONE]`); the backend is not blamed for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_at_its_maximum_duration() {
    let dir = tempfile::tempdir().unwrap();
    // 200 tokens at 20 a second: a 10 s stream, cut at 500 ms.
    let config = "[server]\nstream_max_duration_ms = 500\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\nmock = { latency_ms = 0, ttft_ms = 0, tokens_per_second = 20, answer_tokens = 200 }\n";
    let router = router(dir.path(), config, &[]);
    let started = Instant::now();
    let a = post(&router.url, "/v1/chat/completions", &chat("auto", true), &[]).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let events = a.events();
    assert!(events.last().unwrap().contains("stream_too_long"), "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert!(events.len() > 2, "some of the answer came first: {events:?}");
}

/// With `sample_rate = 0`, the decision log keeps only what is notable:
/// here, the requests that failed over or failed, none of the ordinary ones.
#[tokio::test(flavor = "multi_thread")]
async fn the_decision_log_samples_ordinary_requests_and_keeps_notable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    let config = format!(
        "[decision_log]\npath = \"decisions.jsonl\"\nsample_rate = 0.0\n[retry]\nbackoff_ms = 0\n[circuit]\nfailure_threshold = 1000\n\
         [[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n\
         [[backends]]\nname = \"ok\"\nprovider = \"openai\"\nbase_url = \"{m}/v1\"\nmodel = \"ok-model\"\n\
         [[backends]]\nname = \"down\"\nprovider = \"openai\"\nbase_url = \"{m}/v1\"\nmodel = \"down?fault=503\"\n",
        m = mock.url
    );
    let router = router(dir.path(), &config, &[]);
    for stream in [false, true] {
        for _ in 0..5 {
            let a = post(&router.url, "/v1/chat/completions", &chat("ok", stream), &[]).await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
        let a = post(&router.url, "/v1/chat/completions", &chat("down", stream), &[]).await;
        assert_eq!(a.status, 502, "{}", a.body);
    }
    let path = dir.path().join("decisions.jsonl");
    let records = support::decision_records(&path, 2).await;
    // Let a late record (there must be none) arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records_now = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!((records.len(), records_now), (2, 2), "{records:?}");
    assert!(records.iter().all(|r| r["status"] == 502 && r["backend"].is_null()), "{records:?}");
}

/// With `compress`, a decision log rotated at its size is gzipped
/// (`FILE.1.gz`), and the gzipped file holds the records before the current
/// file's.
#[tokio::test(flavor = "multi_thread")]
async fn rotated_decision_logs_are_gzipped_when_asked() {
    use std::io::Read;

    let dir = tempfile::tempdir().unwrap();
    let config = "[decision_log]\npath = \"decisions.jsonl\"\ninclude_prompts = true\nmax_file_mib = 1\ncompress = true\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let router = router(dir.path(), config, &[]);
    // Records of about 16 KiB each (the prompt, as the policy's view keeps it): 1 MiB in some 70.
    let long = "lorem ipsum ".repeat(1500);
    for i in 0..100 {
        let body = serde_json::json!({"model": "auto", "user": format!("u{i}"), "messages": [{"role": "user", "content": long}]});
        assert_eq!(post(&router.url, "/v1/chat/completions", &body, &[]).await.status, 200);
    }
    let (gz, plain) = (dir.path().join("decisions.jsonl.1.gz"), dir.path().join("decisions.jsonl.1"));
    let started = Instant::now();
    // The plain rotated file is removed a moment after the gzipped one is in place.
    while !gz.exists() || plain.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no {}, or the plain rotated file left, in {:?}",
            gz.display(),
            std::fs::read_dir(dir.path()).unwrap().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap()).read_to_string(&mut text).unwrap();
    let users: Vec<String> =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["request"]["user"].as_str().unwrap().to_owned()).collect();
    assert_eq!(users.first().map(String::as_str), Some("u0"), "the first records are in FILE.1.gz");
    assert!(users.len() > 40 && text.len() <= 1 << 20, "{} records, {} bytes", users.len(), text.len());
}

/// After an external rotation moved the decision log away, SIGHUP makes the
/// router write to a new file at the configured path; nothing is lost, and
/// the dropped-records counter is exported.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reopens_the_decision_log_after_an_external_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[decision_log]\npath = \"decisions.jsonl\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let router = router(dir.path(), config, &[]);
    let (path, moved) = (dir.path().join("decisions.jsonl"), dir.path().join("decisions.jsonl.rotated"));
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await.status, 200);
    assert_eq!(support::decision_records(&path, 1).await.len(), 1);
    std::fs::rename(&path, &moved).unwrap();
    router.hangup();
    router.until_logged("decision log reopened", 1).await;
    assert_eq!(post(&router.url, "/v1/chat/completions", &chat("auto", false), &[]).await.status, 200);
    assert_eq!(support::decision_records(&path, 1).await.len(), 1, "the new file has the new record");
    assert_eq!(std::fs::read_to_string(&moved).unwrap().lines().count(), 1, "the rotated file keeps the old one");
    let admin = router.admin_url.clone().unwrap();
    let metrics = support::client().get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchyard_decision_log_dropped_total 0"), "{metrics}");
}

/// An HTTP/2 peer that stops answering (here: never acknowledges a ping) is
/// closed after `http2_keepalive_ms`, freeing its connection slot.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_http2_peer_is_closed_by_the_keepalive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    // (With the 20 s default the same peer is still connected 5 s later.)
    let config = "[server]\nhttp2_keepalive_ms = 200\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let router = router(dir.path(), config, &[]);
    let mut peer = tokio::net::TcpStream::connect(router.url.trim_start_matches("http://")).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame; then silence, whatever the router sends.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let started = Instant::now();
    let mut frames = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut frames)).await.is_ok();
    assert!(closed && started.elapsed() < Duration::from_secs(3), "still open after {:?}", started.elapsed());
    // Among what it sent before closing: a PING frame (type 6).
    assert!(frames.windows(4).any(|w| w[3] == 6 && w[0..3] == [0, 0, 8]), "no ping in {frames:?}");
}

/// A connection with nothing in flight for `server.idle_timeout_ms` is
/// closed gracefully: an HTTP/2 peer that acknowledges every ping but never
/// opens a stream, and an HTTP/1 keep-alive client after its answer. With
/// the default (2 min) the same peer is still connected seconds later.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/2 peer that acknowledges SETTINGS and PING frames and does
    /// nothing else, until the router closes the connection; returns how
    /// long that took, or `None` if it stayed open for `patience`.
    async fn polite_h2_peer(url: &str, patience: Duration) -> Option<Duration> {
        let mut peer = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.unwrap();
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(patience.saturating_sub(started.elapsed()), peer.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                Ok(Ok(n)) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let payload: Vec<u8> = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                if kind == 4 && flags & 1 == 0 {
                    peer.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00").await.unwrap();
                }
                if kind == 6 && flags & 1 == 0 {
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&payload);
                    peer.write_all(&ack).await.unwrap();
                }
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    // The keep-alive's ping interval is also the time a peer has to answer
    // one: 500 ms, so that a busy test machine's stall does not close it.
    let config = "[server]\nidle_timeout_ms = 1500\nhttp2_keepalive_ms = 500\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n";
    let router = router(dir.path(), config, &[]);
    // Pinged every 500 ms and answering, yet closed once idle for 1.5 s.
    let took = polite_h2_peer(&router.url, Duration::from_secs(8)).await.expect("the idle HTTP/2 peer was not closed");
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4), "closed after {took:?}");

    // HTTP/1 keep-alive: an answer, then silence; closed after the idle timeout.
    let mut client = tokio::net::TcpStream::connect(router.url.trim_start_matches("http://")).await.unwrap();
    client.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await.is_ok();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert!(closed && started.elapsed() < Duration::from_secs(4), "keep-alive connection open after {:?}", started.elapsed());

    // With the default, the same HTTP/2 peer stays connected.
    let dir = tempfile::tempdir().unwrap();
    let router = support::router(dir.path(), "[server]\nhttp2_keepalive_ms = 500\n[[backends]]\nname = \"m\"\nprovider = \"mock\"\n", &[]);
    assert_eq!(polite_h2_peer(&router.url, Duration::from_secs(3)).await, None, "closed though the default idle timeout is 2 min");
}

/// A request no target of its route can ever serve (embeddings to an
/// Anthropic backend) is the client's error, 400, not a passing 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_no_target_can_serve_is_a_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let toml = format!(
        "[[backends]]\nname = \"c\"\nprovider = \"anthropic\"\nbase_url = \"{}/v1\"\napi_key = \"sk-ant-test\"\nmodel = \"claude-x\"\n",
        mock.url
    );
    let router = router(dir.path(), &toml, &[]);
    let a = post(&router.url, "/v1/embeddings", &json!({"model": "c", "input": "hi"}), &[]).await;
    assert_eq!((a.status, a.header("x-should-retry")), (400, Some("false")), "{}", a.body);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    assert!(a.json()["error"]["message"].as_str().unwrap().contains("c: cannot serve this API"), "{}", a.body);
    assert!(received(&mock).await.is_empty());
}
