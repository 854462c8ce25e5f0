//! `switchyard replay` on a generated decision log of 10 000 records: the
//! report's numbers checked exactly, against the logged decisions and
//! against a second policy.

use std::io::Write;
use std::process::Command;

use serde_json::{json, Value};
use switchyard_tests::artifacts;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().unwrap()
}

const CONFIG: &str = r#"
[[backends]]
name = "cheap"
provider = "mock"
input_price = 1.0
output_price = 2.0

[[backends]]
name = "dear"
provider = "mock"
input_price = 5.0
output_price = 10.0
"#;

/// Record `i`: logged on `dear` when `i % 3 == 0`, else on `cheap`, with 100
/// input and 50 output tokens; the first 50 without their prompts.
fn record(i: usize) -> Value {
    let logged = if i.is_multiple_of(3) { "dear" } else { "cheap" };
    let message = if i < 50 { json!({"role": "user", "text_bytes": 12}) } else { json!({"role": "user", "text": format!("question {i}")}) };
    let stats = json!({"circuit": "closed", "in_flight": 0, "latency_p50_ms": 0.0, "latency_p95_ms": 0.0, "ttft_ms": 0.0, "error_rate": 0.0, "samples": 0});
    json!({
        "ts_ms": 1, "request_id": format!("r{i}"), "policy": "cheapest-healthy@x", "seed": i,
        "request": {"id": format!("r{i}"), "model": "auto", "messages": [message], "seed": i, "user": format!("u{i}")},
        "backends": [{"name": "cheap", "stats": stats}, {"name": "dear", "stats": stats}],
        "decision": {"targets": [{"backend": logged, "model": null}], "labels": {}},
        "backend": logged, "status": 200, "tokens": {"input": 100, "output": 50},
    })
}

#[test]
fn a_log_of_ten_thousand_records_replays_to_exact_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let log = dir.path().join("decisions.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
    for i in 0..10_000 {
        writeln!(file, "{}", record(i)).unwrap();
    }
    // Not decided by a policy: skipped; not records at all: unreadable.
    for i in 0..100 {
        let mut r = record(i);
        r["policy"] = json!("targets");
        r["backends"] = Value::Null;
        writeln!(file, "{r}").unwrap();
    }
    for _ in 0..7 {
        writeln!(file, "not json").unwrap();
    }
    // Edge cases: logged rejections (replayed), a failed policy's fallback
    // (skipped), a backend the configuration no longer has, without tokens
    // (replayed, not costed), shadow records (skipped).
    for i in 0..10 {
        let mut r = record(i);
        r["decision"] = json!({"reject": {"status": 403, "message": "no"}});
        writeln!(file, "{r}").unwrap();
    }
    for i in 0..5 {
        let mut r = record(i);
        r["decision"]["policy_error"] = json!({"kind": "trap", "message": "x"});
        writeln!(file, "{r}").unwrap();
    }
    for i in 0..5 {
        let mut r = record(i);
        r["decision"] = json!({"targets": [{"backend": "gone"}], "labels": {}});
        r["tokens"] = Value::Null;
        writeln!(file, "{r}").unwrap();
    }
    // Logged when the configuration had only `cheap`: replayed, and counted as decided among other backends.
    for i in [61, 62, 64, 65] {
        let mut r = record(i);
        r["backends"] = json!([r["backends"][0].clone()]);
        writeln!(file, "{r}").unwrap();
    }
    for i in 0..3 {
        writeln!(file, "{}", json!({"ts_ms": 1, "request_id": format!("r{i}"), "policy": "p@x", "shadow": {"result": "differed"}}))
            .unwrap();
    }
    drop(file);

    let policy = artifacts::CHEAPEST_HEALTHY;
    let out = switchyard(&["replay", log.to_str().unwrap(), "--policy", policy, "--config", config.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // cheapest-healthy picks `cheap` every time: it agrees with the 6 666
    // records logged on `cheap` and moves the 3 334 logged on `dear`.
    assert_eq!(report["records"], 10_134);
    assert_eq!(
        (report["replayed"].as_u64(), report["skipped"].as_u64(), report["unreadable"].as_u64()),
        (Some(10_019), Some(108), Some(7))
    );
    assert_eq!(report["other_backends"], 4);
    assert_eq!(report["without_prompts"], 50 + 10 + 5, "the edge cases reuse the first records' requests");
    assert_eq!(report["agreed"], 6_670);
    assert_eq!(report["changed"], json!({"dear -> cheap": 3_334, "gone -> cheap": 5, "reject -> cheap": 10}));
    assert_eq!((report["rejected"].as_u64(), report["errors"].clone()), (Some(0), json!({})));
    assert_eq!(report["costed"], 10_004);
    // 100 in, 50 out: $0.0002 on cheap, $0.001 on dear.
    let before = 6_670.0 * 0.0002 + 3_334.0 * 0.001;
    assert!((report["cost_before"].as_f64().unwrap() - before).abs() < 1e-9, "{report}");
    assert!((report["cost_after"].as_f64().unwrap() - 10_004.0 * 0.0002).abs() < 1e-9, "{report}");
    assert!(
        report["decision_us_p50"].as_f64().unwrap() > 0.0
            && report["decision_us_p99"].as_f64().unwrap() >= report["decision_us_p50"].as_f64().unwrap()
    );

    // Against a second policy (the same one): every decision agrees.
    let out = switchyard(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        policy,
        "--config",
        config.to_str().unwrap(),
        "--against",
        policy,
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["agreed"].as_u64(), report["changed"].clone()), (Some(10_019), json!({})));
    assert_eq!(report["cost_before"], report["cost_after"], "the same choices cost the same");
    // Only one policy's records: none here are `other`'s.
    let args = ["replay", log.to_str().unwrap(), "--policy", policy, "--config", config.to_str().unwrap(), "--name", "other", "--json"];
    let report: Value = serde_json::from_slice(&switchyard(&args).stdout).unwrap();
    assert_eq!((report["replayed"].as_u64(), report["skipped"].as_u64()), (Some(0), Some(10_127)));
    // With `--name`, a candidate takes that name's configuration, whatever
    // its file is called (before: its file's stem's, so `ab_test.wasm`
    // found no `[policies.config.ab]` and refused to start).
    let ab = dir.path().join("ab.toml");
    let arms = r#"arms = [{ name = "control", backend = "dear", weight = 50 }, { name = "cand", backend = "cheap", weight = 50 }]"#;
    std::fs::write(&ab, format!("{CONFIG}\n[policies.config.ab]\n{arms}\n")).unwrap();
    let out = switchyard(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        artifacts::AB_TEST,
        "--config",
        ab.to_str().unwrap(),
        "--name",
        "ab",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The human report says the same, and a gzipped log reads the same.
    let gz = dir.path().join("decisions.jsonl.gz");
    let mut encoder = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    encoder.write_all(&std::fs::read(&log).unwrap()).unwrap();
    encoder.finish().unwrap();
    let out = switchyard(&["replay", gz.to_str().unwrap(), "--policy", policy, "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("agreement     66.57% (6670 of 10019)"), "{text}");
    assert!(text.contains("other backends  4 (logged with other backends"), "{text}");
    assert!(text.contains("3334  dear -> cheap"), "{text}");
    assert!(text.contains("without prompts 65"), "{text}");
    assert!(text.contains("cost          $4.6680 -> $2.0008"), "{text}");
}

#[test]
fn replay_refuses_what_it_cannot_read_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let policy = artifacts::CHEAPEST_HEALTHY;
    for (args, message) in [
        (
            vec!["replay", "/no/such/log", "--policy", policy, "--config", config.to_str().unwrap()],
            "cannot open the decision log /no/such/log",
        ),
        (vec!["replay", "-", "--policy", "/no/such.wasm", "--config", config.to_str().unwrap()], "cannot read the policy /no/such.wasm"),
        (vec!["replay", "-", "--policy", policy, "--config", "/no/such.toml"], "/no/such.toml"),
    ] {
        let out = switchyard(&args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
