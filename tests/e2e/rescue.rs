//! Mid-stream rescue through the real router: a primary whose stream
//! breaks after its first bytes (each way the mock can break it), and a
//! fallback of each kind (takes prefill, refuses it, regenerates only,
//! Anthropic, answers differently, none), for text and tool-call streams.
//! What must hold: a rescued stream carries exactly the canonical answer
//! (no byte twice, none missing), under one id, with usage and `[DONE]`;
//! one that cannot be rescued ends with an error event that names the
//! break and each try, and no `[DONE]`; the upstream calls are the
//! expected ones, in order; everything within the budget.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{clear, mock_upstream, post, received, router, Answer};
use switchyard_tests::artifacts;

/// The request budget (`retry.total_timeout_ms`).
const BUDGET_MS: u64 = 4000;
/// What the router may take beyond the budget on a slow machine.
const SLACK: Duration = Duration::from_millis(1500);

/// How the primary's stream breaks, after five events (the role chunk and
/// four tokens, or the role, the tool call's start and three argument
/// fragments).
const BREAKS: &[(&str, &str)] = &[
    ("cut", "fault=cut&chunks=5"),
    ("close", "fault=close&chunks=5"),
    ("stall", "fault=stall&chunks=5"),
    ("malformed", "fault=malformed&chunks=5"),
    ("error-event", "fault=error-event&chunks=5"),
    // Every chunk, the finish and the usage, but no `[DONE]`: complete.
    ("no-done", "fault=no-done"),
];

/// The fallbacks: name and backend settings. `none` has no fallback.
const FALLBACKS: &[(&str, &str)] = &[
    ("prefill", "provider = \"openai\"\nmodel = \"canon?answer=canonical\"\ncapabilities = { prefill = true, tools = true }"),
    (
        "no-prefill",
        "provider = \"openai\"\nmodel = \"canon?fault=no-prefill&answer=canonical\"\ncapabilities = { prefill = true, tools = true }",
    ),
    ("regenerate", "provider = \"openai\"\nmodel = \"canon?answer=canonical\"\ncapabilities = { tools = true }"),
    ("anthropic", "provider = \"anthropic\"\nmodel = \"canon?answer=canonical\"\ncapabilities = { tools = true }"),
    ("divergent", "provider = \"openai\"\nmodel = \"other?answer=alternative\"\ncapabilities = { tools = true }"),
    ("none", ""),
];

/// Routes `<break>.<fallback>`: `bad-<break>` (cheapest) then
/// `fb-<fallback>`, through a copy of cheapest-healthy per route.
fn config(dir: &std::path::Path, mock: &str) -> String {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let tags = |f: &dyn Fn(&str, &str) -> bool| {
        let mut all = Vec::new();
        for (b, _) in BREAKS {
            for (f_name, _) in FALLBACKS {
                if f(b, f_name) {
                    all.push(format!("\"{b}.{f_name}\""));
                }
            }
        }
        all.join(", ")
    };
    let mut config = format!(
        "[retry]\nmax_attempts = 4\ntotal_timeout_ms = {BUDGET_MS}\nbackoff_ms = 0\n\n[circuit]\nfailure_threshold = 1000\n\n[policies]\ndir = \"policies\"\n"
    );
    for (name, query) in BREAKS {
        config.push_str(&format!(
            "\n[[backends]]\nname = \"bad-{name}\"\nprovider = \"openai\"\nbase_url = \"{mock}/v1\"\nmodel = \"canon?{query}&answer=canonical\"\ntags = [{}]\nstream_idle_timeout_ms = 500\ncapabilities = {{ tools = true }}\n",
            tags(&|b, _| b == *name)
        ));
    }
    for (name, settings) in FALLBACKS.iter().filter(|(n, _)| *n != "none") {
        config.push_str(&format!(
            "\n[[backends]]\nname = \"fb-{name}\"\n{settings}\nbase_url = \"{mock}/v1\"\ninput_price = 1.0\ntags = [{}]\n",
            tags(&|_, f| f == *name)
        ));
    }
    for (b, _) in BREAKS {
        for (f, _) in FALLBACKS {
            let policy = format!("r-{b}-{f}");
            std::fs::copy(artifacts::CHEAPEST_HEALTHY, policies.join(format!("{policy}.wasm"))).unwrap();
            config.push_str(&format!(
                "\n[[routes]]\nmodel = \"{b}.{f}\"\npolicy = \"{policy}\"\n\n[policies.config.{policy}]\nrequire_tag = \"{b}.{f}\"\nmax_targets = 2\n"
            ));
        }
    }
    config
}

fn request(model: &str, tools: bool) -> Value {
    let mut body = json!({
        "model": model, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Tell me about routers and their rescue."}],
    });
    if tools {
        body["tools"] = json!([{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]);
    }
    body
}

/// What a client assembles from a stream.
#[derive(Debug, Default, PartialEq)]
struct Assembled {
    text: String,
    /// Tool calls by index: id, name, arguments.
    calls: Vec<(String, String, String)>,
}

/// The stream's assembled answer, its chunk ids, finish reasons and usage.
fn assemble(a: &Answer) -> (Assembled, Vec<String>, Vec<String>, Option<Value>) {
    let mut out = Assembled::default();
    let (mut ids, mut finishes, mut usage) = (Vec::new(), Vec::new(), None);
    for event in a.events().iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        if chunk.get("error").is_some() {
            continue;
        }
        ids.push(chunk["id"].as_str().unwrap().to_owned());
        if !chunk["usage"].is_null() {
            usage = Some(chunk["usage"].clone());
        }
        for choice in chunk["choices"].as_array().unwrap() {
            if let Some(f) = choice["finish_reason"].as_str() {
                finishes.push(f.to_owned());
            }
            let delta = &choice["delta"];
            out.text.push_str(delta["content"].as_str().unwrap_or_default());
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap() as usize;
                if out.calls.len() <= i {
                    out.calls.resize(i + 1, Default::default());
                }
                let entry = &mut out.calls[i];
                if let Some(id) = call["id"].as_str() {
                    assert!(entry.0.is_empty(), "a tool call's start was sent twice: {}", a.body);
                    entry.0 = id.to_owned();
                }
                entry.1.push_str(call["function"]["name"].as_str().unwrap_or_default());
                entry.2.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
    }
    (out, ids, finishes, usage)
}

/// Whether `part` is the start of `whole`.
fn is_prefix(part: &Assembled, whole: &Assembled) -> bool {
    whole.text.starts_with(&part.text)
        && part.calls.len() <= whole.calls.len()
        && part
            .calls
            .iter()
            .zip(&whole.calls)
            .all(|(p, w)| (p.0.is_empty() || p.0 == w.0) && w.1.starts_with(&p.1) && w.2.starts_with(&p.2))
}

/// The upstream calls a case makes, as (backend model, whether the last
/// message was an assistant turn).
fn calls_of(got: &[Value]) -> Vec<(String, bool)> {
    got.iter()
        .map(|r| {
            let last = r["body"]["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
            (r["model"].as_str().unwrap().to_owned(), last["role"] == "assistant")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_broken_mid_answer_are_rescued_exactly_or_end_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let router = router(dir.path(), &config(dir.path(), &mock.url), &[]);

    for tools in [false, true] {
        let kind = if tools { "tool-call stream" } else { "text stream" };
        // The canonical answer, from a backend asked directly.
        let (canonical, _, _, canonical_usage) =
            assemble(&post(&router.url, "/v1/chat/completions", &request("fb-regenerate", tools), &[]).await);
        let canonical_usage = canonical_usage.expect("usage asked for");
        let tokens = |u: &Value, k: &str| u[k].as_u64().unwrap();
        assert!(if tools { canonical.calls.len() == 1 && canonical.text.is_empty() } else { canonical.text.len() > 40 }, "{canonical:?}");

        for (brk, _) in BREAKS {
            for (fallback, _) in FALLBACKS {
                let case = format!("{kind}, {brk}, fallback {fallback}");
                clear(&mock).await;
                let started = Instant::now();
                let a = post(&router.url, "/v1/chat/completions", &request(&format!("{brk}.{fallback}"), tools), &[]).await;
                let took = started.elapsed();
                assert_eq!(a.status, 200, "{case}: {}", a.body);
                assert!(took < Duration::from_millis(BUDGET_MS) + SLACK, "{case} took {took:?}");
                let (got, ids, finishes, usage) = assemble(&a);
                let events = a.events();
                let seams = a.body.lines().filter(|l| l.starts_with(": rescued")).count();
                let calls = calls_of(&received(&mock).await);
                let bad = format!("canon?{}&answer=canonical", BREAKS.iter().find(|b| b.0 == *brk).unwrap().1);
                let fb = |prefill: bool| {
                    let model = match *fallback {
                        "no-prefill" => "canon?fault=no-prefill&answer=canonical",
                        "divergent" => "other?answer=alternative",
                        _ => "canon?answer=canonical",
                    };
                    (model.to_owned(), prefill)
                };

                // Rescued: exactly the canonical answer, once.
                let by_prefill = !tools && matches!(*fallback, "prefill" | "no-prefill" | "anthropic");
                // (Anthropic's tool-call streams too: the mock regenerates the same call.)
                let rescued = *brk != "no-done" && matches!(*fallback, "prefill" | "no-prefill" | "regenerate" | "anthropic");
                let expected_calls: Vec<(String, bool)> = match (*brk, *fallback) {
                    ("no-done", _) | (_, "none") => vec![(bad.clone(), false)],
                    (_, "no-prefill") if by_prefill => vec![(bad.clone(), false), fb(true), fb(false)],
                    _ => vec![(bad.clone(), false), fb(by_prefill)],
                };
                assert_eq!(calls, expected_calls, "{case}: upstream calls");
                if rescued || *brk == "no-done" {
                    assert_eq!(got, canonical, "{case}: the client's answer\n{}", a.body);
                    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{case}: {}", a.body);
                    assert!(ids.iter().all(|id| *id == ids[0]), "{case}: one stream id: {ids:?}");
                    assert_eq!(finishes, [if tools { "tool_calls" } else { "stop" }], "{case}: one finish");
                    // Usage adds up every upstream stream: the broken one's prompt
                    // counted again, its completion estimated from what it sent.
                    let usage = usage.unwrap_or_else(|| panic!("{case}: no usage: {}", a.body));
                    let streams = if *brk == "no-done" { 1 } else { 2 };
                    assert_eq!(tokens(&usage, "prompt_tokens"), streams * tokens(&canonical_usage, "prompt_tokens"), "{case}: {usage}");
                    assert!(tokens(&usage, "completion_tokens") >= tokens(&canonical_usage, "completion_tokens"), "{case}: {usage}");
                    assert_eq!(tokens(&usage, "total_tokens"), tokens(&usage, "prompt_tokens") + tokens(&usage, "completion_tokens"));
                    assert_eq!(seams, usize::from(*brk != "no-done"), "{case}: seam comments: {}", a.body);
                } else {
                    assert!(!events.iter().any(|e| e == "[DONE]"), "{case} ended like a success: {}", a.body);
                    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
                    assert_eq!(last["error"]["code"], "stream_interrupted", "{case}: {}", a.body);
                    let message = last["error"]["message"].as_str().unwrap();
                    assert!(message.contains(&format!("`bad-{brk}`")), "{case}: the break is named: {message}");
                    if *fallback != "none" {
                        assert!(message.contains(&format!("`fb-{fallback}`")), "{case}: the try is named: {message}");
                    }
                    assert!(
                        is_prefix(&got, &canonical) && got != canonical,
                        "{case}: the client has a cut answer, without anything twice: {got:?}"
                    );
                    assert_eq!(seams, 0, "{case}: no seam without a continuation");
                }
            }
        }
    }
}

/// With rescue off for a route, a break ends the stream with the error
/// event though a fallback is there; the fallback is never called.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_with_rescue_off_is_never_rescued() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let mut config = config(dir.path(), &mock.url);
    // The same route, once more with rescue off.
    std::fs::copy(artifacts::CHEAPEST_HEALTHY, dir.path().join("policies/off.wasm")).unwrap();
    config.push_str("\n[[routes]]\nmodel = \"off\"\npolicy = \"off\"\nrescue = false\n\n[policies.config.off]\nrequire_tag = \"cut.prefill\"\nmax_targets = 2\n");
    config.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let router = router(dir.path(), &config, &[]);
    for (model, rescued) in [("cut.prefill", true), ("off", false)] {
        clear(&mock).await;
        let a = post(&router.url, "/v1/chat/completions", &request(model, false), &[]).await;
        let events = a.events();
        assert_eq!(events.last().map(String::as_str) == Some("[DONE]"), rescued, "{model}: {}", a.body);
        assert_eq!(received(&mock).await.len(), if rescued { 2 } else { 1 }, "{model}");
    }
    let admin = router.admin_url.clone().unwrap();
    let metrics = support::client().get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("switchyard_stream_rescues_total{backend=\"fb-prefill\",mode=\"prefill\",outcome=\"rescued\"} 1"),
        "{metrics}"
    );
}

/// A continuation that breaks too is a second break: rescued again while
/// `rescue.max_rescues` allows, then the stream ends with the error event.
/// The decision log records each break and each try.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_is_rescued_at_most_max_rescues_times_and_each_seam_is_logged() {
    for max_rescues in [2, 1] {
        let dir = tempfile::tempdir().unwrap();
        let mock = mock_upstream(dir.path());
        let backend = |name: &str, query: &str, price: f64| {
            format!("[[backends]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"canon?{query}answer=canonical\"\ninput_price = {price}\n", mock.url)
        };
        let config = format!(
            "[rescue]\nmax_rescues = {max_rescues}\n[decision_log]\npath = \"decisions.jsonl\"\n[[routes]]\nmodel = \"auto\"\npolicy = \"cheapest-healthy\"\n[policies.config.cheapest-healthy]\nmax_targets = 3\n{}{}{}",
            backend("first", "fault=cut&chunks=5&", 0.0),
            backend("second", "fault=cut&chunks=9&", 1.0),
            backend("third", "", 2.0),
        );
        let router = router(dir.path(), &config, &[]);
        let canonical = assemble(&post(&router.url, "/v1/chat/completions", &request("third", false), &[]).await).0;
        clear(&mock).await;
        let a = post(&router.url, "/v1/chat/completions", &request("auto", false), &[]).await;
        let (got, ..) = assemble(&a);
        let calls: Vec<String> = calls_of(&received(&mock).await).into_iter().map(|(m, _)| m).collect();
        let records = support::decision_records(&dir.path().join("decisions.jsonl"), 2).await;
        let stream = &records.last().unwrap()["stream"];
        let breaks: Vec<&str> = stream["rescues"].as_array().unwrap().iter().map(|r| r["broke"].as_str().unwrap()).collect();
        assert_eq!(breaks, ["first", "second"], "max_rescues {max_rescues}: {stream}");
        let first_try = &stream["rescues"][0]["tries"][0];
        assert_eq!((first_try["backend"].as_str(), first_try["mode"].as_str()), (Some("second"), Some("regenerate")), "{stream}");
        if max_rescues == 2 {
            assert_eq!(got, canonical, "{}", a.body);
            assert_eq!(a.body.lines().filter(|l| l.starts_with(": rescued")).count(), 2, "{}", a.body);
            assert_eq!(
                calls,
                ["canon?fault=cut&chunks=5&answer=canonical", "canon?fault=cut&chunks=9&answer=canonical", "canon?answer=canonical"]
            );
            assert_eq!(stream["end"], "rescued", "{stream}");
            assert_eq!(stream["rescues"][1]["tries"][0]["backend"], "third", "{stream}");
            assert_eq!(stream["rescues"][1]["tries"][0]["outcome"], "rescued", "{stream}");
        } else {
            let last: Value = serde_json::from_str(a.events().last().unwrap()).unwrap();
            let message = last["error"]["message"].as_str().unwrap();
            assert!(message.contains("`first`") && message.contains("`second`") && message.contains("rescue.max_rescues"), "{message}");
            assert_eq!(calls, ["canon?fault=cut&chunks=5&answer=canonical", "canon?fault=cut&chunks=9&answer=canonical"]);
            assert!(is_prefix(&got, &canonical) && got != canonical, "{got:?}");
        }
    }
}
