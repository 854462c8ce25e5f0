//! The quality router's evaluation: RouteLLM's MMLU outcomes, the held-out
//! split, the compiled policy's score for each question through the real
//! runtime, and the quality-cost curve with its CPT figures.

use std::io::BufRead;

use serde_json::Value;
use switchyard::contract::Backend;
use switchyard::policy::{Decision, LoadedPolicy, PolicyRuntime, RuntimeSettings};

use crate::{artifacts, chat_request, read, Fleet};

/// The data set, in the repository.
pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/quality-router/data/routellm-mmlu.jsonl.gz");

/// One MMLU question and how the two models did on it.
#[derive(Debug, Clone)]
pub struct Question {
    /// Its id (the first 12 hex digits of the prompt's SHA-1).
    pub id: String,
    /// The MMLU subject.
    pub subject: String,
    /// The prompt.
    pub prompt: String,
    /// The weak (cheap) model answered correctly.
    pub weak: bool,
    /// The strong model answered correctly.
    pub strong: bool,
}

/// The held-out questions, in file order: those the trainer never saw. The
/// trainer applies the split rule (`policies/quality-router/data/README.md`)
/// and writes their ids to `model/held-out-ids.txt`.
pub fn held_out() -> Vec<Question> {
    let ids: std::collections::HashSet<String> =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/quality-router/model/held-out-ids.txt"))
            .expect("the held-out ids")
            .lines()
            .map(str::to_owned)
            .collect();
    let file = std::fs::File::open(DATA).unwrap_or_else(|e| panic!("{DATA}: {e}"));
    let mut out = Vec::new();
    for line in std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        if ids.contains(&id) {
            out.push(Question {
                id,
                subject: v["subject"].as_str().unwrap().to_owned(),
                prompt: v["prompt"].as_str().unwrap().to_owned(),
                weak: v["weak_correct"].as_bool().unwrap(),
                strong: v["strong_correct"].as_bool().unwrap(),
            });
        }
    }
    out
}

/// A strong and a cheap backend, for the policy's `init`.
pub fn fleet() -> Fleet {
    Fleet::default().with("strong", 10.0, |_, _| {}).with("cheap", 0.5, |_, _| {})
}

/// The compiled policy, loaded by the real runtime, with `config`.
pub fn load(config: &str) -> std::sync::Arc<LoadedPolicy> {
    let runtime = PolicyRuntime::new(RuntimeSettings { cache_dir: None, ..Default::default() }).unwrap();
    let backends: Vec<Backend> = fleet().backends;
    runtime.load("quality-router", &read(artifacts::QUALITY_ROUTER), config, &backends).unwrap()
}

/// The policy's decision on `text`: its `score` label and first target.
pub fn decide(policy: &LoadedPolicy, fleet: &Fleet, text: &str) -> (f64, String) {
    match policy.decide(&chat_request("auto", text), &fleet.stats).unwrap() {
        Decision::Route(route) => {
            let score = route.labels.iter().find(|(k, _)| k == "score").map(|(_, v)| v.parse().unwrap()).expect("a score label");
            (score, route.targets[0].backend.clone())
        }
        other => panic!("{other:?}"),
    }
}

/// The quality-cost curve of routing by `scores`: the accuracy when the
/// `k` highest-scoring questions go to the strong model, for `k = 0..=n`.
pub fn curve(questions: &[Question], scores: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..questions.len()).collect();
    // Stable: ties keep file order, as the trainer's argsort does.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let n = questions.len() as f64;
    let mut correct = questions.iter().filter(|q| q.weak).count() as f64;
    let mut out = vec![correct / n];
    for i in order {
        correct += f64::from(u8::from(questions[i].strong)) - f64::from(u8::from(questions[i].weak));
        out.push(correct / n);
    }
    out
}

/// Accuracy of the weak and the strong model alone.
pub fn extremes(questions: &[Question]) -> (f64, f64) {
    let n = questions.len() as f64;
    (questions.iter().filter(|q| q.weak).count() as f64 / n, questions.iter().filter(|q| q.strong).count() as f64 / n)
}

/// CPT(`x`): the share of strong calls at which the curve first recovers
/// `x` of the gap between the weak and the strong model.
pub fn cpt(questions: &[Question], curve: &[f64], x: f64) -> f64 {
    let (weak, strong) = extremes(questions);
    let target = weak + x * (strong - weak);
    let k = curve.iter().position(|&a| a >= target - 1e-12).unwrap_or(curve.len() - 1);
    k as f64 / questions.len() as f64
}

/// The curve's accuracy at a share (0 to 1) of strong calls.
pub fn at_share(curve: &[f64], share: f64) -> f64 {
    curve[((curve.len() - 1) as f64 * share).round() as usize]
}
