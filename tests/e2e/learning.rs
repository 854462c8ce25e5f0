//! Policies that learn or stick, through the running router: `bandit`
//! (Thompson sampling on outcomes, in policy state) converges to the
//! backend that fails least; `sticky-session` keeps a session on one
//! backend, and a backend's failure moves only its own sessions.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;

use serde_json::json;
use support::{post, router, Proc};
use switchyard_tests::artifacts;

fn policy_router(dir: &std::path::Path, policy: (&str, &str), backends: &str, extra: &str) -> Proc {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(policy.1, policies.join(format!("{}.wasm", policy.0))).unwrap();
    let config = format!("[policies]\ndir = \"policies\"\n{extra}\n[[routes]]\nmodel = \"auto\"\npolicy = \"{}\"\n{backends}", policy.0);
    router(dir, &config, &[])
}

fn backend(name: &str, url: &str, model: &str) -> String {
    format!("[[backends]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{url}/v1\"\nmodel = \"{model}\"\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bandit_converges_to_the_backend_that_fails_least() {
    let dir = tempfile::tempdir().unwrap();
    let mock = support::mock_upstream(dir.path());
    // Half of `bad`'s answers fail, one in five of `meh`'s, none of `good`'s.
    let backends = [
        backend("bad", &mock.url, "bad?fault=flap&fail=1&pass=1"),
        backend("meh", &mock.url, "meh?fault=flap&fail=1&pass=4"),
        backend("good", &mock.url, "good"),
    ]
    .concat();
    // Failures stay visible to the bandit: no same-backend retry, no circuit.
    let extra = "[retry]\nsame_backend = 0\n[circuit]\nfailure_threshold = 100000";
    let router = policy_router(dir.path(), ("bandit", artifacts::BANDIT), &backends, extra);
    let mut firsts = Vec::new();
    for i in 0..300 {
        let a = post(
            &router.url,
            "/v1/chat/completions",
            &json!({"model": "auto", "messages": [{"role": "user", "content": format!("q{i}")}]}),
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "a fallback answers when the first fails: {}", a.body);
        let labels = a.header("x-switchyard-labels").unwrap_or_default().to_owned();
        firsts.push(labels.split(',').find_map(|l| l.strip_prefix("arm=")).unwrap_or_default().to_owned());
    }
    let last: HashMap<&str, usize> = firsts[200..].iter().fold(HashMap::new(), |mut m, f| {
        *m.entry(f.as_str()).or_default() += 1;
        m
    });
    let early_good = firsts[..30].iter().filter(|f| *f == "good").count();
    println!("the last 100 first targets: {last:?} (the first 30 had {early_good} on good)");
    assert!(last.get("good").copied().unwrap_or(0) >= 60, "the last 100 first targets: {last:?} (the first 30 had {early_good} on good)");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_stick_and_a_failure_moves_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mocks: Vec<Proc> = (0..3).map(|_| support::mock_upstream(dir.path())).collect();
    let names = ["a", "b", "c"];
    let backends: String = names.iter().zip(&mocks).map(|(n, m)| backend(n, &m.url, n)).collect();
    let extra = "[retry]\nsame_backend = 0\n[circuit]\nfailure_threshold = 2\nopen_ms = 600000";
    let mut router = policy_router(dir.path(), ("sticky-session", artifacts::STICKY_SESSION), &backends, extra);
    let ask = |s: usize| json!({"model": "auto", "messages": [{"role": "user", "content": format!("turn of session {s}")}]});
    let session = |s: usize| format!("s{s}");
    let mut placed: HashMap<usize, String> = HashMap::new();
    for round in 0..2 {
        for s in 0..60 {
            let a = post(&router.url, "/v1/chat/completions", &ask(s), &[("x-switchyard-session", &session(s))]).await;
            let backend = a.header("x-switchyard-backend").unwrap().to_owned();
            match round {
                0 => {
                    placed.insert(s, backend);
                }
                _ => assert_eq!(placed[&s], backend, "session {s} moved while every backend was healthy"),
            }
        }
    }
    let per_backend = |b: &str| placed.values().filter(|v| *v == b).count();
    assert!(names.iter().all(|b| per_backend(b) >= 5), "sessions spread: {:?}", names.map(per_backend));

    // `b` goes down: its circuit opens after two failures (answered by fallbacks).
    let mut mocks = mocks;
    mocks[1].terminate();
    for s in 0..60 {
        let a = post(&router.url, "/v1/chat/completions", &ask(s), &[("x-switchyard-session", &session(s))]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    for s in 0..60 {
        let a = post(&router.url, "/v1/chat/completions", &ask(s), &[("x-switchyard-session", &session(s))]).await;
        let now = a.header("x-switchyard-backend").unwrap();
        if placed[&s] == "b" {
            assert_ne!(now, "b", "session {s} is still sent to the failed backend");
        } else {
            assert_eq!(now, placed[&s], "session {s} moved, though its backend is healthy");
        }
    }
    router.terminate();
}
