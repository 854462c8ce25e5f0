//! Policies written in other languages, through the same runtime and
//! registry as Rust ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::contract::Request;
use switchyard::policy::{Decision, PolicyErrorKind, PolicyRegistry, PolicyRuntime, PolicySources, RuntimeSettings};
use switchyard_tests::{artifacts, chat_request, eight_backends, polyglot_policy, read, test_cache_dir, Lang};

const AB_CONFIG: &str = r#"{"arms": [{"name": "control", "backend": "gpt-4o", "weight": 70}, {"name": "candidate", "backend": "claude-sonnet", "weight": 30}]}"#;

fn runtime() -> PolicyRuntime {
    // Python guests are slower than Rust ones: a roomier deadline for loaded CI machines.
    PolicyRuntime::new(RuntimeSettings {
        cache_dir: Some(test_cache_dir()),
        call_deadline: Duration::from_millis(200),
        ..Default::default()
    })
    .unwrap()
}

fn arm(decision: Decision) -> (String, String, Vec<String>) {
    let Decision::Route(plan) = decision else { panic!("{decision:?}") };
    let arm = plan.labels.iter().find(|(k, _)| k == "arm").unwrap().1.clone();
    let how = plan.labels.iter().find(|(k, _)| k == "assignment").unwrap().1.clone();
    (arm, how, plan.targets.into_iter().map(|t| t.backend).collect())
}

fn as_user(user: Option<String>, seed: u64) -> Request {
    let mut r = chat_request("auto", "hello");
    (r.caller.user, r.seed) = (user, seed);
    r
}

#[test]
fn python_ab_test_agrees_with_the_rust_one() {
    agrees_with_rust(Lang::Python);
}

#[test]
fn javascript_ab_test_agrees_with_the_rust_one() {
    agrees_with_rust(Lang::JavaScript);
}

/// The `ab-test` policy in `lang` puts every request in the same arm as the
/// Rust one, and refuses a bad config the same way.
fn agrees_with_rust(lang: Lang) {
    let wasm = polyglot_policy(lang, "ab-test");
    let fleet = eight_backends();
    let runtime = runtime();
    let other = runtime.load("ab-test-other", &std::fs::read(&wasm).unwrap(), AB_CONFIG, &fleet.backends).unwrap();
    let rust = runtime.load("ab-test", &read(artifacts::AB_TEST), AB_CONFIG, &fleet.backends).unwrap();
    for i in 0..300u64 {
        let user = (i % 3 != 0).then(|| format!("user-{i}"));
        let request = as_user(user.clone(), i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (their_arm, their_how, their_targets) = arm(other.decide(&request, &fleet.stats).unwrap());
        let (rs_arm, rs_how, _) = arm(rust.decide(&request, &fleet.stats).unwrap());
        assert_eq!((&their_arm, &their_how), (&rs_arm, &rs_how), "{lang:?}, request {i} (user {user:?})");
        let primary = if their_arm == "control" { "gpt-4o" } else { "claude-sonnet" };
        assert_eq!(their_targets[0], primary);
    }
    let err = runtime.load("ab-test-other", &std::fs::read(&wasm).unwrap(), r#"{"arms": []}"#, &fleet.backends).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::ConfigRefused, "{lang:?}");
    assert!(err.message().contains("`arms` is empty"), "{lang:?}: {err}");
}

#[test]
fn a_python_policy_hot_swaps_with_a_rust_one() {
    let py = polyglot_policy(Lang::Python, "ab-test");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("split.wasm");
    std::fs::write(&file, read(artifacts::AB_TEST)).unwrap();
    let fleet = eight_backends();
    let sources = PolicySources { dir: Some(dir.path().to_path_buf()), builtin: vec![], trust: None };
    let configs = HashMap::from([("split".to_owned(), AB_CONFIG.to_owned())]);
    let registry = Arc::new(PolicyRegistry::open(runtime(), sources, fleet.backends.clone(), configs).unwrap());
    let _watcher = switchyard::policy::watch(&registry, switchyard::policy::DEFAULT_DEBOUNCE, Duration::from_secs(60)).unwrap();
    let rust_version = registry.get("split").unwrap().version().to_owned();

    let tmp = dir.path().join(".split.tmp");
    std::fs::copy(&py, &tmp).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let started = Instant::now();
    let mut decisions = 0;
    while registry.get("split").unwrap().version() == rust_version {
        // Requests keep being served by the Rust version while the Python one loads.
        arm(registry.get("split").unwrap().decide(&as_user(Some("u1".into()), 1), &fleet.stats).unwrap());
        decisions += 1;
        // Generous: a cold compile of an 18 MB component on a busy 2-core machine.
        assert!(started.elapsed() < Duration::from_secs(300), "the Python version never took over: {:?}", registry.statuses());
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("Python version serving {:?} after the swap ({decisions} decisions meanwhile)", started.elapsed());
    let (arm_name, _, _) = arm(registry.get("split").unwrap().decide(&as_user(Some("u1".into()), 1), &fleet.stats).unwrap());
    assert!(["control", "candidate"].contains(&arm_name.as_str()));
}
