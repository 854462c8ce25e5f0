//! The quality router, compiled and loaded by the real runtime: it scores
//! as its trainer does, routes by its threshold, refuses bad configs, and
//! on a slice of the held-out questions (never seen in training) its
//! quality-cost curve is computed and lies above the random router's. The
//! full evaluation is `bench/quality.sh`.

use switchyard::policy::Decision;
use switchyard_tests::quality::{self, at_share, cpt, curve, extremes};
use switchyard_tests::{chat_request, read};

/// Held-out questions the fast check scores.
const SLICE: usize = 400;

#[test]
fn the_compiled_policy_scores_as_its_trainer_does() {
    let check: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/quality-router/model/feature-check.json")).unwrap(),
    )
    .unwrap();
    let policy = quality::load(r#"{"strong": "strong", "cheap": "cheap"}"#);
    let fleet = quality::fleet();
    for c in check["checks"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let (score, _) = quality::decide(&policy, &fleet, text);
        let want = c["score"].as_f64().unwrap();
        // The label has four decimals.
        assert!((score - want).abs() <= 6e-5, "{text:?}: the policy scores {score}, the trainer {want}");
    }
    let Decision::Route(route) = policy.decide(&chat_request("auto", "What is 2 + 2?"), &fleet.stats).unwrap() else { panic!() };
    let model = route.labels.iter().find(|(k, _)| k == "model").map(|(_, v)| v.clone());
    assert_eq!(model.as_deref(), check["version"].as_str(), "the model's version is labelled");
}

#[test]
fn the_threshold_decides_and_bad_configs_are_refused() {
    let fleet = quality::fleet();
    let prompt = "Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over Q.";
    for (config, first, reason) in [
        (r#"{"strong": "strong", "cheap": "cheap", "strong_share": 1.0}"#, "strong", "predicted-benefit"),
        (r#"{"strong": "strong", "cheap": "cheap", "strong_share": 0.0}"#, "cheap", "below-threshold"),
        (r#"{"strong": "strong", "cheap": "cheap", "threshold": -100}"#, "strong", "predicted-benefit"),
        (r#"{"strong": "strong", "cheap": "cheap", "threshold": 100}"#, "cheap", "below-threshold"),
    ] {
        let policy = quality::load(config);
        let Decision::Route(route) = policy.decide(&chat_request("auto", prompt), &fleet.stats).unwrap() else { panic!() };
        let targets: Vec<&str> = route.targets.iter().map(|t| t.backend.as_str()).collect();
        assert_eq!(targets[0], first, "{config}");
        assert_eq!(targets.len(), 2, "{config}: the other model is the fallback");
        assert!(route.labels.contains(&("reason".into(), reason.into())), "{config}: {:?}", route.labels);
    }
    let runtime =
        switchyard::policy::PolicyRuntime::new(switchyard::policy::RuntimeSettings { cache_dir: None, ..Default::default() }).unwrap();
    let wasm = read(switchyard_tests::artifacts::QUALITY_ROUTER);
    for (config, problem) in [
        (r#"{"strong": "nope", "cheap": "cheap"}"#, "`strong` = `nope`"),
        (r#"{"strong": "strong"}"#, "missing field `cheap`"),
        (r#"{"strong": "strong", "cheap": "cheap", "strong_share": 2}"#, "between 0 and 1"),
        (r#"{"strong": "strong", "cheap": "cheap", "strong_share": 0.5, "threshold": 0.1}"#, "not both"),
    ] {
        let error = runtime.load("quality-router", &wasm, config, &fleet.backends).err().unwrap_or_else(|| panic!("{config} loaded"));
        assert!(error.to_string().contains(problem), "{config}: {error}");
    }
}

#[test]
fn on_held_out_questions_the_curve_is_above_random() {
    let questions: Vec<_> = quality::held_out().into_iter().take(SLICE).collect();
    assert_eq!(questions.len(), SLICE);
    let policy = quality::load(r#"{"strong": "strong", "cheap": "cheap"}"#);
    let fleet = quality::fleet();
    let scores: Vec<f64> = questions.iter().map(|q| quality::decide(&policy, &fleet, &q.prompt).0).collect();
    let curve = curve(&questions, &scores);
    assert_eq!(curve.len(), SLICE + 1);
    let (weak, strong) = extremes(&questions);
    assert!((curve[0] - weak).abs() < 1e-9 && (curve[SLICE] - strong).abs() < 1e-9, "the curve runs from weak to strong");
    // Random routing's curve is the straight line between the two.
    let above: f64 = (1..SLICE).map(|k| curve[k] - (weak + (strong - weak) * k as f64 / SLICE as f64)).sum::<f64>() / SLICE as f64;
    assert!(above > 0.0, "the curve is not above random: mean gap {above}");
    assert!(at_share(&curve, 0.5) > weak + 0.5 * (strong - weak), "at half the strong calls");
    let cpt50 = cpt(&questions, &curve, 0.5);
    assert!(cpt50 < 0.5, "CPT(50%) {cpt50} is no better than random");
}
