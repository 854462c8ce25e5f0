//! Policy isolation through the running router: guest output never reaches
//! a request, a policy that cannot decide fails closed (its route's
//! `on_policy_error`, never the configured order), and no client request can
//! make a policy fail.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{mock_upstream, post, received, router, Answer, Proc};
use switchyard_tests::{artifacts, polyglot_fixture, Lang};

/// A backend that can take every request here (a large request's token
/// estimate is large, its tools need a backend with tools): these tests are
/// about what else a request's size changes.
fn backend(name: &str, mock: &Proc, model: &str, tags: &str) -> String {
    format!(
        "[[backends]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"{model}\"\ntags = [{tags}]\ncontext_window = 100000000\n\
         capabilities = {{ vision = true, tools = true, json_mode = true, stream = true }}\n",
        mock.url
    )
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Puts `wasm` into `dir/policies/<name>.wasm` by write-then-rename, as an
/// operator's deploy would.
fn install(dir: &Path, name: &str, wasm: &Path) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let tmp = policies.join(format!(".{name}.tmp"));
    std::fs::copy(wasm, &tmp).unwrap();
    std::fs::rename(&tmp, policies.join(format!("{name}.wasm"))).unwrap();
}

fn labels(a: &Answer) -> &str {
    a.header("x-switchyard-labels").unwrap_or_default()
}

/// A guest in a language, and the models that make it print and route,
/// throw, or print and then trap.
struct Noisy {
    lang: &'static str,
    wasm: std::path::PathBuf,
    config: &'static str,
    print: &'static str,
    trap: &'static str,
    print_trap: &'static str,
    /// A line the guest writes in `init` and one it writes per route call.
    init_line: &'static str,
    route_line: &'static str,
}

fn noisy_guests() -> Vec<Noisy> {
    vec![
        Noisy {
            lang: "rust",
            wasm: artifacts::HOSTILE.into(),
            config: "\"noisy\"",
            print: "print",
            trap: "panic",
            print_trap: "print-trap",
            init_line: "hostile init on stdout",
            route_line: "hostile route on stderr",
        },
        Noisy {
            lang: "python",
            wasm: polyglot_fixture(Lang::Python, "noisy"),
            config: "{}",
            print: "hello",
            trap: "throw",
            print_trap: "print-trap",
            init_line: "noisy-python init on stdout",
            route_line: "noisy-python route hello on stderr",
        },
        Noisy {
            lang: "js",
            wasm: polyglot_fixture(Lang::JavaScript, "noisy"),
            config: "{}",
            print: "hello",
            trap: "throw",
            print_trap: "print-trap",
            init_line: "noisy-js init on stdout",
            route_line: "noisy-js route hello on stderr",
        },
    ]
}

/// Waits until `f` holds, or fails after `secs` seconds with `what`.
async fn eventually<F: std::future::Future<Output = bool>>(secs: u64, what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_never_reaches_a_request_in_any_language() {
    for guest in noisy_guests() {
        let lang = guest.lang;
        let dir = tempfile::tempdir().unwrap();
        let mock = mock_upstream(dir.path());
        install(dir.path(), "noisy", &guest.wasm);
        // The router starts with a policy that prints in `init` in its directory.
        let config = format!(
            "[policies]\ndir = \"policies\"\n[policies.config.noisy]\nv = {}\n[policies.config.late]\nv = {}\n\
             [[routes]]\nmodel = \"late\"\npolicy = \"late\"\n[[routes]]\nmodel = \"*\"\npolicy = \"noisy\"\n{}",
            guest.config,
            guest.config,
            backend("up", &mock, "up-model", "")
        );
        let mut router = router(dir.path(), &config, &[]);

        for stream in [false, true] {
            for _ in 0..3 {
                let mut body = ask(guest.print, "hi");
                body["stream"] = json!(stream);
                let a = post(&router.url, "/v1/chat/completions", &body, &[]).await;
                assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("up")), "{lang} stream={stream}: {}", a.body);
                if stream {
                    assert_eq!(a.events().last().map(String::as_str), Some("[DONE]"), "{lang}: {}", a.body);
                }
            }
        }
        for model in [guest.trap, guest.print_trap] {
            let a = post(&router.url, "/v1/chat/completions", &ask(model, "hi"), &[]).await;
            assert_eq!(a.status, 503, "{lang} {model}: {}", a.body);
            assert_eq!(a.json()["error"]["code"], "policy_failed", "{lang} {model}");
            assert!(a.json()["error"]["message"].as_str().unwrap().contains("`noisy`"), "{lang}: {}", a.body);
            assert_eq!(labels(&a), "policy_error=trap", "{lang} {model}");
            // The next request gets a fresh instance and is served.
            let a = post(&router.url, "/v1/chat/completions", &ask(guest.print, "hi"), &[]).await;
            assert_eq!(a.status, 200, "{lang} after {model}: {}", a.body);
        }

        // Hot load: the same guest dropped into the running router's directory.
        let a = post(&router.url, "/v1/chat/completions", &ask("late", "hi"), &[]).await;
        assert_eq!((a.status, labels(&a)), (503, "policy_error=not_found"), "{lang}: no version of `late` yet: {}", a.body);
        install(dir.path(), "late", &guest.wasm);
        let url = router.url.clone();
        eventually(120, &format!("{lang}: `late` to load"), || {
            let url = url.clone();
            async move { post(&url, "/v1/chat/completions", &ask("late", "hi"), &[]).await.status == 200 }
        })
        .await;

        assert!(router.is_running(), "{lang}");
        let logs = router.logs();
        // A guest's own panic is logged as its thread `<unnamed>`; no thread of the router panicked.
        let router_panics = logs.lines().filter(|l| l.contains("panicked at") && !l.contains("thread '<unnamed>'")).count();
        assert_eq!(router_panics, 0, "{lang}: {logs}");
        for line in [guest.init_line, guest.route_line] {
            assert!(logs.contains(line), "{lang}: the router's log lacks the guest's `{line}`:\n{logs}");
        }
        let traps = logs.lines().filter(|l| l.contains("policy could not decide") && l.contains("`noisy`: trap")).count();
        assert_eq!(traps, 2, "{lang}: two traps:\n{logs}");
        router.terminate();
    }
}

const ADMIN_TOKEN: &str = "isolation-admin-token";

/// A router over a public and a private backend (public first, so the old
/// fall-open to configuration order would pick it), with the hostile fixture
/// on a rejecting route and a route that falls back to the private backend.
fn fail_closed_router(dir: &Path, mock: &Proc, policies: &str) -> Proc {
    install(dir, "hostile", Path::new(artifacts::HOSTILE));
    install(dir, "hostile-fallback", Path::new(artifacts::HOSTILE));
    install(dir, "private-data", Path::new(artifacts::PRIVATE_DATA));
    let config = format!(
        "[policies]\ndir = \"policies\"\n{policies}\n[decision_log]\npath = \"decisions.jsonl\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [[routes]]\nmodel = \"reject-route\"\npolicy = \"hostile\"\n\
         [[routes]]\nmodel = \"fallback-route\"\npolicy = \"hostile-fallback\"\non_policy_error = [\"private\"]\n\
         [[routes]]\nmodel = \"pd\"\npolicy = \"private-data\"\n\
         [circuit]\nfailure_threshold = 1000\n{}{}",
        backend("public", mock, "public-model", ""),
        backend("private", mock, "private-model", "\"private\"")
    );
    router(dir, &config, &[])
}

/// Sends a sensitive prompt on both hostile routes with `mode`; the
/// rejecting route answers 503 naming `kind`, the other serves it on the
/// private backend.
async fn force(router: &Proc, mode: &str, kind: &str) {
    let prompt = format!("secret plan {mode}: card 4111 1111 1111 1111");
    let a = post(&router.url, "/v1/chat/completions", &ask("reject-route", &prompt), &[("x-switchyard-mode", mode)]).await;
    assert_eq!(a.status, 503, "{mode}: {}", a.body);
    let error = &a.json()["error"];
    assert_eq!((error["code"].as_str(), error["type"].as_str()), (Some("policy_failed"), Some("server_error")), "{mode}");
    assert!(error["message"].as_str().unwrap().contains(&format!("`hostile` could not decide ({kind})")), "{mode}: {}", a.body);
    assert_eq!(labels(&a), format!("policy_error={kind}"), "{mode}");

    let a = post(&router.url, "/v1/chat/completions", &ask("fallback-route", &prompt), &[("x-switchyard-mode", mode)]).await;
    assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("private")), "{mode}: {}", a.body);
    assert_eq!(labels(&a), format!("policy_error={kind}"), "{mode}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_cannot_decide_fails_closed_and_no_prompt_reaches_the_public_backend() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    // A small fuel budget, so the looping guest spends it quickly.
    let router = fail_closed_router(dir.path(), &mock, "call_fuel = 5000000");
    for (mode, kind) in [
        ("panic", "trap"),
        ("abort", "trap"),
        ("loop", "budget"),
        ("bomb", "memory_limit"),
        ("unknown", "invalid_decision"),
        ("huge", "invalid_decision"),
        ("empty", "invalid_decision"),
        ("bad-status", "invalid_decision"),
    ] {
        force(&router, mode, kind).await;
    }
    // A spent budget is the policy's fault and deterministic: it never benches the policy for everyone.
    for _ in 0..5 {
        force(&router, "loop", "budget").await;
    }
    for r in received(&mock).await {
        assert_ne!(r["model"], "public-model", "a prompt reached the public backend: {r}");
    }
    let a = post(&router.url, "/v1/chat/completions", &ask("reject-route", "hello"), &[]).await;
    assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("public")), "not benched: {}", a.body);

    // The decision log (written by a thread of its own) says what the route did, and why.
    let path = dir.path().join("decisions.jsonl");
    let failed_records = || {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        // (A last line may be half written: it counts once whole.)
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| !r["decision"]["policy_error"].is_null())
            .collect::<Vec<_>>()
    };
    eventually(10, "26 decision-log records of failed policies", || std::future::ready(failed_records().len() >= 2 * 13)).await;
    let failed = failed_records();
    assert_eq!(failed.len(), 2 * 13);
    let rejected = failed.iter().find(|r| r["policy"] == "hostile").unwrap();
    assert_eq!((rejected["decision"]["reject"]["status"].as_u64(), rejected["status"].as_u64()), (Some(503), Some(503)), "{rejected}");
    let fallback = failed.iter().find(|r| r["policy"] == "hostile-fallback").unwrap();
    assert_eq!(fallback["decision"]["targets"], json!([{"backend": "private", "model": "private-model"}]), "{fallback}");
    assert_eq!(fallback["decision"]["policy_error"]["kind"], "trap", "{fallback}");

    // So do the metrics: per policy, kind of failure and what the route did.
    let admin = router.admin_url.clone().expect("no admin listener");
    let metrics = support::client().get(format!("{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    for (policy, kind, action, n) in
        [("hostile", "budget", "reject", 6), ("hostile-fallback", "budget", "fallback", 6), ("hostile", "trap", "reject", 2)]
    {
        let series = format!("switchyard_policy_errors_total{{policy=\"{policy}\",kind=\"{kind}\",action=\"{action}\"}} {n}");
        assert!(metrics.contains(&series), "no `{series}` in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quarantined_policy_fails_closed_too() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    // Fuel far above the wall-clock backstop: the loop hits the backstop,
    // three times in a row benches the version.
    let router = fail_closed_router(dir.path(), &mock, "call_fuel = 100000000000\ncall_deadline_ms = 20");
    for _ in 0..3 {
        let a = post(&router.url, "/v1/chat/completions", &ask("reject-route", "x"), &[("x-switchyard-mode", "loop")]).await;
        assert_eq!(labels(&a), "policy_error=timeout", "{}", a.body);
        let a = post(&router.url, "/v1/chat/completions", &ask("fallback-route", "x"), &[("x-switchyard-mode", "loop")]).await;
        assert_eq!(labels(&a), "policy_error=timeout", "{}", a.body);
    }
    force(&router, "ok", "quarantined").await;
    for r in received(&mock).await {
        assert_ne!(r["model"], "public-model", "a prompt reached the public backend: {r}");
    }
}

/// Guest code that runs long (a loop that only its backstop ends) never
/// holds up the router's other connections, wherever decisions run: on the
/// workers it yields to them at every epoch tick, with `decide_on =
/// "threads"` it runs on threads of its own. Past `threads` decisions at
/// once and `queue` waiting, a decision fails at once as overloaded.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_running_long_never_holds_up_other_requests() {
    // More loops at once than the router has workers (one per core), on machines of up to 8 cores.
    const LOOPS: usize = 8;
    for decide_on in ["worker", "threads"] {
        let dir = tempfile::tempdir().unwrap();
        let mock = mock_upstream(dir.path());
        let policies =
            format!("decide_on = \"{decide_on}\"\nthreads = {LOOPS}\nqueue = 1\ncall_fuel = 100000000000\ncall_deadline_ms = 1000");
        let router = fail_closed_router(dir.path(), &mock, &policies);
        // LOOPS run, one waits, one is refused.
        let loops: Vec<_> = (0..LOOPS + 2)
            .map(|_| {
                let url = router.url.clone();
                tokio::spawn(async move {
                    post(&url, "/v1/chat/completions", &ask("fallback-route", "x"), &[("x-switchyard-mode", "loop")]).await
                })
            })
            .collect();
        let admin = router.admin_url.clone().unwrap();
        eventually(30, &format!("{decide_on}: every loop to be under way"), || {
            let admin = admin.clone();
            async move {
                let status = support::admin_json(&admin, "/admin/policies", ADMIN_TOKEN).await;
                let policy = status["policies"].as_array().unwrap().iter().find(|p| p["name"] == "hostile-fallback").cloned().unwrap();
                // The loops, and the one refused (counted as a call too).
                policy["stats"]["calls"].as_u64() >= Some(LOOPS as u64 + 1)
            }
        })
        .await;
        // Requests that need no policy are answered while every loop still runs.
        for i in 0..5 {
            let a = post(&router.url, "/v1/chat/completions", &ask("public-model", "hello"), &[]).await;
            assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("public")), "{decide_on} #{i}: {}", a.body);
        }
        let ended = loops.iter().filter(|l| l.is_finished()).count();
        assert!(ended <= 1, "{decide_on}: {ended} loops ended before the other requests were answered (only the refused one may)");
        let mut labelled = Vec::new();
        for l in loops {
            let a = l.await.unwrap();
            assert_eq!(a.header("x-switchyard-backend"), Some("private"), "{decide_on}: {}", a.body);
            labelled.push(labels(&a).to_owned());
        }
        let count = |label: &str| labelled.iter().filter(|l| *l == label).count();
        // The one that waited ran after the others' timeouts, which may have benched the version by then.
        let (overloaded, timeouts, quarantined) =
            (count("policy_error=overloaded"), count("policy_error=timeout"), count("policy_error=quarantined"));
        assert_eq!((overloaded, timeouts + quarantined), (1, LOOPS + 1), "{decide_on}: {labelled:?}");
        assert!(timeouts >= LOOPS, "{decide_on}: {labelled:?}");
    }
}

/// A burst of requests, many more than the decisions that may wait, is
/// decided by the policy, none refused as overloaded: a decision short of a
/// tick never yields its worker, and a freed turn goes to whoever asks
/// first, not to a waiter that a busy worker has yet to poll.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_requests_is_decided_by_the_policy_not_refused() {
    const BURST: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let router = fail_closed_router(dir.path(), &mock, "queue = 4");
    let answers: Vec<_> = (0..BURST)
        .map(|i| {
            let url = router.url.clone();
            tokio::spawn(async move { post(&url, "/v1/chat/completions", &ask("pd", &format!("question {i}")), &[]).await })
        })
        .collect();
    let mut refused = 0;
    for a in answers {
        let a = a.await.unwrap();
        if labels(&a).starts_with("policy_error") {
            refused += 1;
        } else {
            assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("public")), "{}", a.body);
        }
    }
    assert_eq!(refused, 0, "of {BURST} requests at once, {refused} were not decided by the policy");
}

/// A guest that waits in the host (a sleep, which spends no fuel) meets
/// the wall-clock backstop too, and fails closed: the epoch counts the time
/// a call spends suspended, and a call suspended in one long host call is
/// ended at its backstop.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_sleeps_meets_its_backstop() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let router = fail_closed_router(dir.path(), &mock, "call_deadline_ms = 100");
    for mode in ["sleep", "sleep-long"] {
        force(&router, mode, "timeout").await;
    }
    for r in received(&mock).await {
        assert_ne!(r["model"], "public-model", "a prompt reached the public backend: {r}");
    }
}

/// Context switches so far of the router's thread named `name` (Linux).
fn thread_switches(router: &Proc, name: &str) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", router.pid())).unwrap();
    let task = tasks
        .map(|t| t.unwrap().path())
        .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == name))
        .unwrap_or_else(|| panic!("the router has no thread `{name}`"));
    let status = std::fs::read_to_string(task.join("status")).unwrap();
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_router_lets_the_epoch_rest_and_its_backstop_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let router = fail_closed_router(dir.path(), &mock, "call_fuel = 100000000000\ncall_deadline_ms = 20");
    // With no guest code running for a second, the epoch's ticker sleeps
    // instead of waking every millisecond.
    let mut rests = false;
    for _ in 0..20 {
        let before = thread_switches(&router, "policy-epoch");
        tokio::time::sleep(Duration::from_millis(500)).await;
        if thread_switches(&router, "policy-epoch") - before < 25 {
            rests = true;
            break;
        }
    }
    assert!(rests, "the epoch ticker of an idle router never rests");
    // The next call wakes it: a loop that fuel does not stop meets the wall-clock backstop.
    let a = post(&router.url, "/v1/chat/completions", &ask("fallback-route", "x"), &[("x-switchyard-mode", "loop")]).await;
    assert_eq!((labels(&a), a.header("x-switchyard-backend")), ("policy_error=timeout", Some("private")), "{}", a.body);
}

/// What makes a request large, and how.
type Edit<'a> = (&'a str, &'a dyn Fn(&mut Value));

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_get_the_same_decision_as_small_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    let router = fail_closed_router(dir.path(), &mock, "");
    let sensitive = "my card is 4111 1111 1111 1111";
    let plain = "What is the capital of France?";
    let padded = |text: &str, edit: &dyn Fn(&mut Value)| {
        let mut body = ask("pd", text);
        edit(&mut body);
        body
    };
    let many_messages = |body: &mut Value| {
        let last = body["messages"][0].clone();
        let mut messages = vec![json!({"role": "user", "content": ""}); 100_000];
        messages.push(last);
        body["messages"] = json!(messages);
    };
    let many_tools = |body: &mut Value| {
        let tools: Vec<Value> =
            (0..10_000).map(|i| json!({"type": "function", "function": {"name": format!("tool_{i}"), "parameters": {}}})).collect();
        body["tools"] = json!(tools);
    };
    let long_user = |body: &mut Value| body["user"] = json!("u".repeat(1 << 20));
    let long_metadata = |body: &mut Value| {
        let meta: serde_json::Map<String, Value> = (0..5_000).map(|i| (format!("k{i}"), json!("v"))).collect();
        body["metadata"] = Value::Object(meta);
    };
    for (text, backend) in [(sensitive, "private"), (plain, "public")] {
        let small = post(&router.url, "/v1/chat/completions", &ask("pd", text), &[]).await;
        assert_eq!((small.status, small.header("x-switchyard-backend")), (200, Some(backend)), "{}", small.body);
        let edits: [Edit; 4] =
            [("100k messages", &many_messages), ("10k tools", &many_tools), ("1 MiB user", &long_user), ("5k tags", &long_metadata)];
        for (what, edit) in edits {
            let a = post(&router.url, "/v1/chat/completions", &padded(text, edit), &[]).await;
            assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some(backend)), "{what}, `{text}`: {}", &a.body);
            assert_eq!(labels(&a), labels(&small), "{what}");
        }
    }
    // Old messages the policy did not see still count as hidden text: a
    // card number 100k messages back keeps the request private.
    let mut body = ask("pd", plain);
    let mut messages = vec![json!({"role": "user", "content": sensitive})];
    messages.extend(std::iter::repeat_n(json!({"role": "user", "content": ""}), 100_000));
    messages.push(json!({"role": "user", "content": plain}));
    body["messages"] = json!(messages);
    let a = post(&router.url, "/v1/chat/completions", &body, &[]).await;
    assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("private")), "{}", a.body);
    for r in received(&mock).await {
        if r["model"] == "public-model" {
            let body = r["body"].to_string();
            assert!(!body.contains("4111 1111"), "a card number reached the public backend: {}", &body[..body.len().min(300)]);
        }
    }
}

/// The first request after start, and every request across a hot swap to a
/// heavy (Python) guest, is decided by a policy: never a policy error.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_request_after_start_and_after_a_swap_is_decided_by_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock_upstream(dir.path());
    install(dir.path(), "swap", Path::new(artifacts::CHEAPEST_HEALTHY));
    let config = format!(
        "[policies]\ndir = \"policies\"\n[[routes]]\nmodel = \"auto\"\npolicy = \"swap\"\n{}",
        backend("up", &mock, "up-model", "")
    );
    let router = router(dir.path(), &config, &[]);
    let first = post(&router.url, "/v1/chat/completions", &ask("auto", "hi"), &[]).await;
    assert_eq!((first.status, labels(&first)), (200, "reason=cheapest"), "{}", first.body);
    let old_policy = first.header("x-switchyard-policy").unwrap().to_owned();

    install(dir.path(), "swap", &polyglot_fixture(Lang::Python, "noisy"));
    let url = router.url.clone();
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = answers.clone();
    eventually(120, "the Python version to serve", || {
        let (url, seen) = (url.clone(), seen.clone());
        async move {
            let a = post(&url, "/v1/chat/completions", &ask("auto", "hi"), &[]).await;
            let swapped = a.status == 200 && labels(&a) == "fixture=noisy";
            seen.lock().unwrap().push((a.status, labels(&a).to_owned(), a.header("x-switchyard-policy").map(str::to_owned)));
            swapped
        }
    })
    .await;
    for (status, labels, policy) in answers.lock().unwrap().iter() {
        assert_eq!(*status, 200, "{labels}");
        let old = policy.as_deref() == Some(old_policy.as_str());
        assert_eq!(labels, if old { "reason=cheapest" } else { "fixture=noisy" }, "{policy:?}");
    }
}
