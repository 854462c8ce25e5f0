//! The policy runtime with real compiled guests: the example policy's
//! decisions, and every way a hostile guest can misbehave.

use std::time::{Duration, Instant};

use switchyard::contract::{CircuitState, Request};
use switchyard::policy::{Decision, InstanceMode, PolicyErrorKind, PolicyRuntime, RuntimeSettings};
use switchyard_tests::{artifacts, chat_request, eight_backends, read, Fleet};

fn settings() -> RuntimeSettings {
    RuntimeSettings {
        // Generous for loaded CI machines (a paused thread is no failed
        // decision); the backstop's own tests set 50 ms.
        call_deadline: Duration::from_secs(1),
        init_deadline: Duration::from_millis(500),
        memory_limit: 16 << 20,
        cache_dir: None,
        ..RuntimeSettings::default()
    }
}

/// The wall-clock backstop in the tests of the backstop itself.
const BACKSTOP: Duration = Duration::from_millis(50);

fn runtime() -> PolicyRuntime {
    PolicyRuntime::new(settings()).unwrap()
}

fn targets(decision: &Decision) -> Vec<&str> {
    match decision {
        Decision::Route(plan) => plan.targets.iter().map(|t| t.backend.as_str()).collect(),
        Decision::Reject { status, message } => panic!("expected a route, got rejection {status}: {message}"),
    }
}

// ---- cheapest-healthy: table-driven decisions ----

struct Case {
    name: &'static str,
    config: &'static str,
    request: fn() -> Request,
    backends: fn() -> Fleet,
    expect: Result<&'static [&'static str], u16>,
}

fn with_image() -> Request {
    let mut r = chat_request("auto", "what is in this picture?");
    r.messages[0].has_image = true;
    r
}

fn long_prompt() -> Request {
    let mut r = chat_request("auto", "long");
    r.input_tokens = 100_000;
    r.max_output_tokens = Some(20_000);
    r
}

fn mixed_backends() -> Fleet {
    Fleet::default()
        .with("pricey", 5.0, |_, _| {})
        .with("cheap-blind", 0.1, |b, _| b.capabilities.vision = false)
        .with("cheap-down", 0.05, |_, s| s.circuit = CircuitState::Open)
        .with("small-context", 0.2, |b, _| b.context_window = 8_000)
        .with("eu-mid", 1.0, |b, _| b.tags = vec!["eu".into()])
}

#[test]
fn cheapest_healthy_decisions() {
    let cases = [
        Case {
            name: "eight backends: three cheapest in price order",
            config: "{}",
            request: || chat_request("auto", "hi"),
            backends: eight_backends,
            expect: Ok(&["llama-8b", "gpt-4o-mini", "qwen-72b"]),
        },
        Case {
            name: "max_targets from config",
            config: r#"{"max_targets": 1}"#,
            request: || chat_request("auto", "hi"),
            backends: eight_backends,
            expect: Ok(&["llama-8b"]),
        },
        Case {
            name: "open circuit goes last",
            config: r#"{"max_targets": 9}"#,
            request: || chat_request("auto", "hi"),
            backends: mixed_backends,
            expect: Ok(&["cheap-blind", "small-context", "eu-mid", "pricey", "cheap-down"]),
        },
        Case {
            name: "images need vision",
            config: r#"{"max_targets": 9}"#,
            request: with_image,
            backends: mixed_backends,
            expect: Ok(&["small-context", "eu-mid", "pricey", "cheap-down"]),
        },
        Case {
            name: "long prompts need a large context",
            config: r#"{"max_targets": 9}"#,
            request: long_prompt,
            backends: mixed_backends,
            expect: Ok(&["cheap-blind", "eu-mid", "pricey", "cheap-down"]),
        },
        Case {
            name: "required tag",
            config: r#"{"require_tag": "eu"}"#,
            request: || chat_request("auto", "hi"),
            backends: mixed_backends,
            expect: Ok(&["eu-mid"]),
        },
        Case {
            name: "nobody has the tag: 400",
            config: r#"{"require_tag": "moon"}"#,
            request: || chat_request("auto", "hi"),
            backends: mixed_backends,
            expect: Err(400),
        },
        Case {
            name: "no backends at all: 400",
            config: "{}",
            request: || chat_request("auto", "hi"),
            backends: Fleet::default,
            expect: Err(400),
        },
    ];
    let runtime = runtime();
    let bytes = read(artifacts::CHEAPEST_HEALTHY);
    for case in cases {
        let fleet = (case.backends)();
        let policy =
            runtime.load("cheapest-healthy", &bytes, case.config, &fleet.backends).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let decision = policy.decide(&(case.request)(), &fleet.stats).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        match (case.expect, &decision) {
            (Ok(expected), Decision::Route(plan)) => {
                assert_eq!(targets(&decision), expected, "{}", case.name);
                assert_eq!(plan.labels, vec![("reason".to_owned(), "cheapest".to_owned())], "{}", case.name);
            }
            (Err(status), Decision::Reject { status: got, message }) => {
                assert_eq!(*got, status, "{}", case.name);
                assert!(message.starts_with("no backend can serve this request"), "{}: {message}", case.name);
            }
            (expect, got) => panic!("{}: expected {expect:?}, got {got:?}", case.name),
        }
    }
}

#[test]
fn target_indices_point_at_the_named_backends() {
    let fleet = eight_backends();
    let policy = runtime().load("cheapest-healthy", &read(artifacts::CHEAPEST_HEALTHY), "{}", &fleet.backends).unwrap();
    let Decision::Route(plan) = policy.decide(&chat_request("auto", "hi"), &fleet.stats).unwrap() else { panic!("expected a route") };
    for target in &plan.targets {
        assert_eq!(fleet.backends[target.index].name, target.backend);
    }
}

#[test]
fn a_config_the_policy_refuses_is_reported_with_its_message() {
    let runtime = runtime();
    let bytes = read(artifacts::CHEAPEST_HEALTHY);
    for config in [r#"{"max_targets": 0}"#, r#"{"max_tragets": 2}"#, "not json"] {
        let err = runtime.load("cheapest-healthy", &bytes, config, &[]).err().unwrap_or_else(|| panic!("config {config} was accepted"));
        assert_eq!(err.kind(), PolicyErrorKind::ConfigRefused, "{config}: {err}");
        assert!(err.message().starts_with("invalid config"), "{config}: {err}");
        assert!(!err.is_retryable());
    }
}

// ---- hostile guests ----

fn hostile(runtime: &PolicyRuntime) -> std::sync::Arc<switchyard::policy::LoadedPolicy> {
    runtime.load("hostile", &read(artifacts::HOSTILE), "{}", &eight_backends().backends).unwrap()
}

/// Calls the hostile policy with `model` and expects `kind`, then checks that
/// the next call on the same version is fine.
fn misbehaves_then_recovers(model: &str, kind: PolicyErrorKind) {
    let runtime = runtime();
    let policy = hostile(&runtime);
    let stats = eight_backends().stats;
    let err = policy.decide(&chat_request(model, "x"), &stats).expect_err(model);
    assert_eq!(err.kind(), kind, "{model}: {err}");
    assert_eq!(err.policy(), "hostile");
    let decision = policy.decide(&chat_request("ok", "x"), &stats).unwrap_or_else(|e| panic!("call after {model}: {e}"));
    assert_eq!(targets(&decision), ["gpt-4o"]);
    let stats = policy.call_stats();
    assert_eq!(stats.calls, 2);
    assert_eq!(stats.failures, vec![(kind, 1)]);
}

#[test]
fn an_infinite_loop_is_stopped_by_its_fuel() {
    let runtime = runtime();
    let policy = hostile(&runtime);
    let err = policy.decide(&chat_request("loop", "x"), &eight_backends().stats).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Budget, "{err}");
    // The same request would cost the same again.
    assert!(!err.is_retryable());
    misbehaves_then_recovers("loop", PolicyErrorKind::Budget);
}

#[test]
fn the_backstop_holds_after_the_node_was_idle() {
    let runtime = PolicyRuntime::new(RuntimeSettings { call_fuel: u64::MAX / 2, call_deadline: BACKSTOP, ..settings() }).unwrap();
    let policy = hostile(&runtime);
    // Past a second with no guest code running the epoch ticker sleeps; the
    // next call must wake it, or the loop would never be stopped.
    std::thread::sleep(Duration::from_millis(1500));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(policy.decide(&chat_request("loop", "x"), &eight_backends().stats).map(|_| ()));
    });
    let err = rx.recv_timeout(Duration::from_secs(2)).expect("the loop was not stopped").unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Timeout);
}

#[test]
fn the_wall_clock_backstop_stops_what_fuel_does_not() {
    let runtime = PolicyRuntime::new(RuntimeSettings { call_fuel: u64::MAX / 2, call_deadline: BACKSTOP, ..settings() }).unwrap();
    let policy = hostile(&runtime);
    let started = Instant::now();
    let err = policy.decide(&chat_request("loop", "x"), &eight_backends().stats).unwrap_err();
    // The backstop is 50 ms; a second means it did not work at all.
    assert!(started.elapsed() < Duration::from_secs(1), "loop ran for {:?}", started.elapsed());
    assert_eq!(err.kind(), PolicyErrorKind::Timeout);
    assert!(err.is_retryable());
}

#[test]
fn a_decision_costs_the_same_fuel_every_time() {
    let fleet = eight_backends();
    let request = chat_request("auto", "Call me at +1 555 010 9999 about the plan.");
    for mode in [InstanceMode::Fresh, InstanceMode::Pooled] {
        let runtime = PolicyRuntime::new(RuntimeSettings { instance_mode: mode, warm_instances: 2, ..settings() }).unwrap();
        for (name, path) in [("cheapest-healthy", artifacts::CHEAPEST_HEALTHY), ("private-data", artifacts::PRIVATE_DATA)] {
            let policy = runtime.load(name, &read(path), "{}", &fleet.backends).unwrap();
            let costs: Vec<u64> = (0..6)
                .map(|_| {
                    let before = policy.call_stats().fuel_used;
                    policy.decide(&request, &fleet.stats).unwrap();
                    policy.call_stats().fuel_used - before
                })
                .collect();
            let (min, max) = (*costs.iter().min().unwrap(), *costs.iter().max().unwrap());
            assert!(min > 1000, "{mode:?} {name}: {costs:?}");
            match mode {
                // A fresh instance has no history: the cost is exact.
                InstanceMode::Fresh => assert_eq!(min, max, "{name}: one request, different costs: {costs:?}"),
                // Warm instances (two here, taken in turn) start from the same
                // history, so a request costs the same on each; later, an
                // instance's allocator remembers its calls: a few percent.
                InstanceMode::Pooled => {
                    assert_eq!((costs[0], costs[2]), (costs[1], costs[3]), "{name}: {costs:?}");
                    let (min, max) = (costs[2..].iter().min().unwrap(), costs[2..].iter().max().unwrap());
                    assert!(max - min <= max / 10, "{name}: {costs:?}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_inside_a_tokio_runtime_is_safe() {
    // wasmtime-wasi's synchronous stdio panics on a tokio thread; loads and
    // decisions made from one must not get there.
    let fleet = eight_backends();
    let runtime = runtime();
    let policy = runtime.load("hostile", &read(artifacts::HOSTILE), r#""noisy""#, &fleet.backends).unwrap();
    let decision = policy.decide(&chat_request("print", "x"), &fleet.stats).unwrap();
    assert_eq!(targets(&decision), ["gpt-4o"]);
    let (decision, _) = policy.decide_async(std::sync::Arc::new(chat_request("print", "x")), fleet.stats.clone()).await.unwrap();
    assert_eq!(targets(&decision), ["gpt-4o"]);
    let err = policy.decide_async(std::sync::Arc::new(chat_request("print-trap", "x")), fleet.stats.clone()).await.unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Trap);
}

#[test]
fn a_memory_bomb_is_stopped_at_the_cap() {
    misbehaves_then_recovers("bomb", PolicyErrorKind::MemoryLimit);
}

#[test]
fn a_panic_is_a_trap() {
    misbehaves_then_recovers("panic", PolicyErrorKind::Trap);
    // The error carries what the guest said on stderr before it trapped.
    let runtime = runtime();
    let policy = hostile(&runtime);
    let err = policy.decide(&chat_request("panic", "x"), &eight_backends().stats).unwrap_err();
    assert!(err.message().contains("the hostile policy panics on purpose"), "{err}");
    // Only this call's lines: the same instance wrote to stderr in an
    // earlier, successful call, then aborted silently.
    policy.decide(&chat_request("stderr", "x"), &eight_backends().stats).unwrap();
    let err = policy.decide(&chat_request("abort", "x"), &eight_backends().stats).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Trap);
    assert!(!err.message().contains("an earlier call"), "{err}");
}

#[test]
fn malformed_decisions_are_policy_errors() {
    for model in ["unknown", "huge", "empty", "bad-status"] {
        misbehaves_then_recovers(model, PolicyErrorKind::InvalidDecision);
    }
    let runtime = runtime();
    let err = hostile(&runtime).decide(&chat_request("unknown", "x"), &eight_backends().stats).unwrap_err();
    assert!(err.message().contains("unknown backend `no-such-backend`"), "{err}");
}

#[test]
fn guest_logging_is_rate_limited() {
    let runtime = runtime();
    let policy = hostile(&runtime);
    let decision = policy.decide(&chat_request("log-spam", "x"), &eight_backends().stats).unwrap();
    assert_eq!(targets(&decision), ["gpt-4o"]);
    // 2000 lines (log import and stdout) against a budget of 50 a second.
    let dropped = policy.call_stats().log_lines_dropped;
    assert!(dropped >= 1900, "only {dropped} lines dropped");
}

#[test]
fn a_version_that_keeps_timing_out_is_quarantined() {
    // Fuel far above the backstop, so the loop hits the backstop.
    let runtime = PolicyRuntime::new(RuntimeSettings {
        quarantine_after: 2,
        quarantine_for: Duration::from_secs(60),
        call_fuel: u64::MAX / 2,
        call_deadline: BACKSTOP,
        ..settings()
    })
    .unwrap();
    let policy = hostile(&runtime);
    let stats = eight_backends().stats;
    for _ in 0..2 {
        assert_eq!(policy.decide(&chat_request("loop", "x"), &stats).unwrap_err().kind(), PolicyErrorKind::Timeout);
    }
    // Benched now: even a well-behaved request is refused, without running the guest.
    let err = policy.decide(&chat_request("ok", "x"), &stats).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Quarantined);
    assert!(policy.call_stats().quarantined);
}

#[test]
fn files_that_are_not_policies_are_refused_clearly() {
    let runtime = runtime();
    let cases: [(&str, Vec<u8>, PolicyErrorKind, &str); 4] = [
        ("text", b"this is not wasm at all".to_vec(), PolicyErrorKind::Compile, "not a WebAssembly file"),
        ("empty", Vec::new(), PolicyErrorKind::Compile, "not a WebAssembly file"),
        ("core-module", b"\0asm\x01\0\0\0".to_vec(), PolicyErrorKind::Compile, "a core WebAssembly module, not a component"),
        (
            "other-world",
            read(artifacts::OTHER_WORLD),
            PolicyErrorKind::WrongWorld,
            "does not fit the `switchyard:policy/policy@0.2.0` world (nor the earlier `switchyard:policy/policy@0.1.0`)",
        ),
    ];
    for (name, bytes, kind, message) in cases {
        let err = runtime.load(name, &bytes, "{}", &[]).err().unwrap_or_else(|| panic!("{name} was loaded"));
        assert_eq!(err.kind(), kind, "{name}: {err}");
        assert!(err.message().contains(message), "{name}: {err}");
    }
    let mut truncated = read(artifacts::CHEAPEST_HEALTHY);
    truncated.truncate(truncated.len() / 2);
    assert_eq!(runtime.load("truncated", &truncated, "{}", &[]).unwrap_err().kind(), PolicyErrorKind::Compile);
}

#[test]
fn init_that_refuses_or_loops_fails_the_load() {
    // Fuel is what must stop the loop here: a wall-clock backstop far above
    // the fuel's run, which took over 500 ms on a slow, busy CI machine.
    let runtime = PolicyRuntime::new(RuntimeSettings { init_deadline: Duration::from_secs(30), ..settings() }).unwrap();
    let bytes = read(artifacts::HOSTILE);
    let err = runtime.load("hostile", &bytes, r#"{"refuse": true}"#, &[]).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::ConfigRefused);
    assert!(err.message().contains("refuses the config"), "{err}");
    let err = runtime.load("hostile", &bytes, r#"{"loop-in-init": true}"#, &[]).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Budget, "{err}");
}

// ---- instance reuse ----

#[test]
fn fresh_mode_instantiates_per_call_and_pooled_mode_reuses() {
    let fleet = eight_backends();
    let request = chat_request("auto", "hi");
    let fresh = PolicyRuntime::new(RuntimeSettings { instance_mode: InstanceMode::Fresh, ..settings() }).unwrap();
    let policy = fresh.load("cheapest-healthy", &read(artifacts::CHEAPEST_HEALTHY), "{}", &fleet.backends).unwrap();
    let created_at_load = policy.call_stats().instances_created;
    for _ in 0..5 {
        assert_eq!(targets(&policy.decide(&request, &fleet.stats).unwrap())[0], "llama-8b");
    }
    assert_eq!(policy.call_stats().instances_created, created_at_load + 5);

    let pooled = PolicyRuntime::new(RuntimeSettings { recycle_after: 4, ..settings() }).unwrap();
    let policy = pooled.load("cheapest-healthy", &read(artifacts::CHEAPEST_HEALTHY), "{}", &fleet.backends).unwrap();
    for _ in 0..12 {
        assert_eq!(targets(&policy.decide(&request, &fleet.stats).unwrap())[0], "llama-8b");
    }
    // One instance from the probe, recycled every 4 calls (the probe's call counts).
    assert_eq!(policy.call_stats().instances_created, 4);
}

#[test]
fn compiled_artifacts_are_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let settings = RuntimeSettings { cache_dir: Some(cache.path().join("nested")), ..settings() };
    let bytes = read(artifacts::CHEAPEST_HEALTHY);
    let runtime = PolicyRuntime::new(settings.clone()).unwrap();
    let fleet = eight_backends();
    let first = runtime.load("cheapest-healthy", &bytes, "{}", &fleet.backends).unwrap();
    let artifacts: Vec<_> = std::fs::read_dir(cache.path().join("nested")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].file_name().unwrap().to_str().unwrap().starts_with(first.version()));

    // A second runtime loads the artifact; a corrupt artifact is compiled again.
    let second = PolicyRuntime::new(settings.clone()).unwrap().load("cheapest-healthy", &bytes, "{}", &fleet.backends).unwrap();
    assert_eq!(second.version(), first.version());
    std::fs::write(&artifacts[0], b"garbage").unwrap();
    let third = PolicyRuntime::new(settings).unwrap().load("cheapest-healthy", &bytes, "{}", &fleet.backends).unwrap();
    assert_eq!(targets(&third.decide(&chat_request("auto", "hi"), &fleet.stats).unwrap())[0], "llama-8b");
    assert!(std::fs::metadata(&artifacts[0]).unwrap().len() > 1000, "the corrupt artifact was not replaced");
}

#[test]
fn stats_must_match_the_backends_of_the_version() {
    let fleet = eight_backends();
    let policy = runtime().load("cheapest-healthy", &read(artifacts::CHEAPEST_HEALTHY), "{}", &fleet.backends).unwrap();
    let err = policy.decide(&chat_request("auto", "hi"), &fleet.stats[..3]).unwrap_err();
    assert_eq!(err.kind(), PolicyErrorKind::Runtime);
    assert!(err.message().contains("stats for 3 backends given, the version was loaded with 8"), "{err}");
}

#[test]
fn live_stats_reach_the_policy() {
    // The same version, first with everything healthy, then with the cheapest
    // backend's circuit open: the decision must follow the stats.
    let mut fleet = eight_backends();
    let policy = runtime().load("cheapest-healthy", &read(artifacts::CHEAPEST_HEALTHY), "{}", &fleet.backends).unwrap();
    let request = chat_request("auto", "hi");
    assert_eq!(targets(&policy.decide(&request, &fleet.stats).unwrap())[0], "llama-8b");
    let cheapest = fleet.backends.iter().position(|b| b.name == "llama-8b").unwrap();
    fleet.stats[cheapest].circuit = CircuitState::Open;
    assert_eq!(targets(&policy.decide(&request, &fleet.stats).unwrap()), ["gpt-4o-mini", "qwen-72b", "llama-70b"]);
}

#[test]
fn guests_get_no_environment_arguments_or_files() {
    // The test process has environment variables and a filesystem; the guest
    // must see none of them.
    assert!(std::env::vars().count() > 0);
    let runtime = runtime();
    let decision = hostile(&runtime).decide(&chat_request("sandbox", "x"), &eight_backends().stats).unwrap();
    let Decision::Route(plan) = decision else { panic!("expected a route") };
    let label = |k: &str| plan.labels.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(label("env"), Some("0"));
    assert_eq!(label("args"), Some("0"));
    assert_eq!(label("root"), Some("denied"));
    assert_eq!(label("cwd"), Some("denied"));
}
