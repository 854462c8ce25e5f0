//! The quality router's full evaluation (run by `bench/quality.sh`): every
//! held-out question through the compiled policy in the real runtime, the
//! quality-cost curve in 1 % steps against the random router and the oracle,
//! CPT(50 %) and CPT(80 %). Writes `bench/quality.json` (for the plot) and
//! prints a Markdown table.

use switchyard_tests::quality::{self, at_share, cpt, curve, extremes, Question};

fn main() {
    let questions = quality::held_out();
    let policy = quality::load(r#"{"strong": "strong", "cheap": "cheap"}"#);
    let fleet = quality::fleet();
    let started = std::time::Instant::now();
    let scores: Vec<f64> = questions.iter().map(|q| quality::decide(&policy, &fleet, &q.prompt).0).collect();
    let per_decision = started.elapsed() / questions.len() as u32;
    let router = curve(&questions, &scores);
    let oracle_scores: Vec<f64> = questions.iter().map(|q| f64::from(u8::from(q.strong)) - f64::from(u8::from(q.weak))).collect();
    let oracle = curve(&questions, &oracle_scores);
    let (weak, strong) = extremes(&questions);
    let random = |share: f64| weak + (strong - weak) * share;
    let shares: Vec<f64> = (0..=100).map(|p| f64::from(p) / 100.0).collect();
    let series = |c: &[f64]| shares.iter().map(|&s| at_share(c, s)).collect::<Vec<f64>>();
    let version = match policy.decide(&switchyard_tests::chat_request("auto", "x"), &fleet.stats).unwrap() {
        switchyard::policy::Decision::Route(r) => r.labels.iter().find(|(k, _)| k == "model").map(|(_, v)| v.clone()).unwrap_or_default(),
        _ => String::new(),
    };
    let subjects: std::collections::BTreeSet<&str> = questions.iter().map(|q: &Question| q.subject.as_str()).collect();
    let out = serde_json::json!({
        "model": version,
        "questions": questions.len(),
        "subjects": subjects.len(),
        "weak": weak, "strong": strong,
        "shares": shares,
        "router": series(&router),
        "random": shares.iter().map(|&s| random(s)).collect::<Vec<f64>>(),
        "oracle": series(&oracle),
        "cpt50": cpt(&questions, &router, 0.5), "cpt80": cpt(&questions, &router, 0.8),
        "oracle_cpt50": cpt(&questions, &oracle, 0.5), "oracle_cpt80": cpt(&questions, &oracle, 0.8),
        "decision_us_through_runtime": per_decision.as_secs_f64() * 1e6,
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/quality.json");
    std::fs::write(path, serde_json::to_string_pretty(&out).unwrap() + "\n").unwrap();
    println!("## Quality router\n");
    println!(
        "`policies/quality-router` model `{version}` on {} held-out MMLU questions ({} subjects), never seen in training, model selection or threshold calibration; each scored by the compiled policy in the real runtime ({:.0} µs a decision, with the call). Plot: [quality.png](quality.png).\n",
        questions.len(),
        subjects.len(),
        per_decision.as_secs_f64() * 1e6
    );
    println!("| strong calls | random | quality-router | oracle |\n|---|---|---|---|");
    for p in [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100] {
        let s = f64::from(p) / 100.0;
        println!("| {p} % | {:.1} % | {:.1} % | {:.1} % |", random(s) * 100.0, at_share(&router, s) * 100.0, at_share(&oracle, s) * 100.0);
    }
    println!(
        "\n| | random | quality-router | oracle |\n|---|---|---|---|\n| CPT(50 %) | 0.50 | {:.3} | {:.3} |\n| CPT(80 %) | 0.80 | {:.3} | {:.3} |",
        cpt(&questions, &router, 0.5),
        cpt(&questions, &oracle, 0.5),
        cpt(&questions, &router, 0.8),
        cpt(&questions, &oracle, 0.8)
    );
    eprintln!("Wrote {path}");
}
