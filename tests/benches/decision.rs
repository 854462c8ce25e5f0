//! Cost of one policy decision through the real runtime, 8 backends.
//!
//! - `warm/*`: a pooled instance, the production path.
//! - `fresh/*`: a new instance (and `init`) per decision, the isolation mode.
//! - `warm/quality-router-2kb`: the learned router on a 2 KB prompt.
//! - `hostile-trivial`: a guest that returns its first backend without
//!   looking at anything: the cost of the call boundary alone (lowering the
//!   request and 8 backends' stats into the guest, lifting the decision, checks).
//! - `contract-0.1/*`, `contract-0.2/*`: `cheapest-healthy` as built against
//!   contract 0.1 (stats as `route`'s argument, records converted) and 0.2
//!   (stats from one `all-stats` host call), over 8 and 200 backends.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::policy::{InstanceMode, PolicyRuntime, RuntimeSettings, DEFAULT_CALL_FUEL};
use switchyard_tests::{artifacts, chat_request, eight_backends, read, Lang};

fn bench(c: &mut Criterion) {
    let fleet = eight_backends();
    let request = chat_request("auto", "Summarise the plot of Hamlet in one line, please.");
    let mut group = c.benchmark_group("decision");
    group.measurement_time(Duration::from_secs(5));
    for (mode, label) in [(InstanceMode::Pooled, "warm"), (InstanceMode::Fresh, "fresh")] {
        let runtime = PolicyRuntime::new(RuntimeSettings { instance_mode: mode, cache_dir: None, ..Default::default() }).unwrap();
        let policies: &[(&str, &str, &str)] = if mode == InstanceMode::Fresh {
            &[("cheapest-healthy", artifacts::CHEAPEST_HEALTHY, "{}"), ("hostile-trivial", artifacts::HOSTILE, "{}")]
        } else {
            &[
                ("cheapest-healthy", artifacts::CHEAPEST_HEALTHY, "{}"),
                ("hostile-trivial", artifacts::HOSTILE, "{}"),
                ("fallback-cheaper", artifacts::FALLBACK_CHEAPER, r#"{"primary": "gpt-4o"}"#),
                ("private-data", artifacts::PRIVATE_DATA, "{}"),
                (
                    "ab-test",
                    artifacts::AB_TEST,
                    r#"{"arms": [{"name": "a", "backend": "gpt-4o", "weight": 1}, {"name": "b", "backend": "claude-sonnet", "weight": 1}]}"#,
                ),
                ("adaptive", artifacts::ADAPTIVE, "{}"),
                ("content-aware", artifacts::CONTENT_AWARE, "{}"),
            ]
        };
        for (name, path, config) in policies {
            let policy = runtime.load(name, &read(path), config, &fleet.backends).unwrap();
            group.bench_function(format!("{label}/{name}"), |b| b.iter(|| policy.decide(&request, &fleet.stats).unwrap()));
            report_fuel(&format!("{label}/{name}"), &policy);
        }
    }
    // The same strategy built against each contract version, 8 and 200 backends.
    let runtime = PolicyRuntime::new(RuntimeSettings { cache_dir: None, ..Default::default() }).unwrap();
    let old = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/contract-0.1/cheapest-healthy.wasm");
    let many = (0..200)
        .fold(switchyard_tests::Fleet::default(), |fleet, i| fleet.with(&format!("backend-{i}"), 0.1 + f64::from(i) * 0.01, |_, _| {}));
    for (size, backends) in [(8, &fleet), (200, &many)] {
        for (version, path) in [("0.2", artifacts::CHEAPEST_HEALTHY), ("0.1", old)] {
            let policy = runtime.load("cheapest-healthy", &read(path), "{}", &backends.backends).unwrap();
            let name = format!("contract-{version}/cheapest-healthy-{size}");
            group.bench_function(&name, |b| b.iter(|| policy.decide(&request, &backends.stats).unwrap()));
            report_fuel(&name, &policy);
        }
    }
    // The learned router scores the prompt's text: measured on a 2 KB prompt.
    let runtime = PolicyRuntime::new(RuntimeSettings { cache_dir: None, ..Default::default() }).unwrap();
    let config = r#"{"strong": "gpt-4o", "cheap": "gpt-4o-mini"}"#;
    let policy = runtime.load("quality-router", &read(artifacts::QUALITY_ROUTER), config, &fleet.backends).unwrap();
    let sentence = "Which of the following best explains why the enzyme's activity falls when the temperature rises past its optimum? ";
    let prompt: String = sentence.repeat(2048 / sentence.len() + 1).chars().take(2048).collect();
    let long = chat_request("auto", &prompt);
    group.bench_function("warm/quality-router-2kb", |b| b.iter(|| policy.decide(&long, &fleet.stats).unwrap()));
    report_fuel("warm/quality-router-2kb", &policy);
    // Policies in other languages, when their toolchain is installed.
    let runtime =
        PolicyRuntime::new(RuntimeSettings { cache_dir: Some(switchyard_tests::test_cache_dir()), ..Default::default() }).unwrap();
    let config = r#"{"arms": [{"name": "a", "backend": "gpt-4o", "weight": 1}, {"name": "b", "backend": "claude-sonnet", "weight": 1}]}"#;
    for (lang, label) in [(Lang::Python, "python"), (Lang::JavaScript, "javascript")] {
        // A benchmark may leave out a language whose toolchain is missing.
        if switchyard_tests::toolchain_available(lang) {
            let wasm = switchyard_tests::polyglot_policy(lang, "ab-test");
            let policy = runtime.load("ab-test", &std::fs::read(wasm).unwrap(), config, &fleet.backends).unwrap();
            group.bench_function(format!("warm/ab-test-{label}"), |b| b.iter(|| policy.decide(&request, &fleet.stats).unwrap()));
            report_fuel(&format!("warm/ab-test-{label}"), &policy);
        }
    }
    group.finish();
}

/// The fuel a decision used on average, against the default budget.
fn report_fuel(name: &str, policy: &switchyard::policy::LoadedPolicy) {
    let stats = policy.call_stats();
    let per_call = stats.fuel_used / stats.calls.max(1);
    println!("{name}: {per_call} fuel per decision ({:.3} % of the default budget)", per_call as f64 * 100.0 / DEFAULT_CALL_FUEL as f64);
}

criterion_group!(benches, bench);
criterion_main!(benches);
