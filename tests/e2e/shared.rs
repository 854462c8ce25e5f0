//! Limits, budgets and the cache shared on a real Redis (`redis-server`,
//! which `scripts/test` installs) by two router processes: one count for
//! the fleet under concurrent load, failovers and rescues counted once, a
//! cached answer written by one node served by the other, and the store
//! stopped mid-run (`on_shared_error`: counting locally, or 503) then back.

#[path = "support/mod.rs"]
mod support;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{post, router, Answer, Proc};

/// A `redis-server` on a free loopback port, without persistence.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: Option<u16>) -> Redis {
        let port = port.unwrap_or_else(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server could not start ({e}); install it: apt-get install redis-server (scripts/test does)"));
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs a command with `redis-cli`.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits (up to 10 s) until every reservation on the store is settled:
    /// a node sends its settlements after the answer, so they land a moment
    /// later.
    async fn until_settled(&self) {
        let started = Instant::now();
        loop {
            let leases = self.cli(&["--scan", "--pattern", "switchyard:q:*:lease"]);
            if leases.lines().all(|key| self.cli(&["ZCARD", key]) == "0") {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "reservations still unsettled: {leases}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 10 s) until the store holds a cached answer: a node
    /// writes it after answering.
    async fn until_cached(&self) {
        let started = Instant::now();
        while self.cli(&["--scan", "--pattern", "switchyard:c:*"]).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "no cached answer reached the store");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(mock: &str, redis: &str, on_error: &str) -> String {
    format!(
        r#"
[retry]
max_attempts = 3
same_backend = 0
total_timeout_ms = 5000

[circuit]
failure_threshold = 100000

[admin]
listen = "127.0.0.1:0"

[shared]
redis_url = "{redis}"
on_shared_error = "{on_error}"
timeout_ms = 200

[[backends]]
name = "a"
provider = "openai"
base_url = "{mock}/v1"
model = "m-a"
input_price = 1000.0
output_price = 2000.0

[[backends]]
name = "flaky"
provider = "openai"
base_url = "{mock}/v1"
model = "flaky?fault=503"

[[backends]]
name = "cut"
provider = "openai"
base_url = "{mock}/v1"
model = "cut?fault=cut&chunks=3&answer=canonical"

[[backends]]
name = "slow"
provider = "openai"
base_url = "{mock}/v1"
model = "slow?fault=slow-first-token&delay_ms=1000"

[[backends]]
name = "whole"
provider = "openai"
base_url = "{mock}/v1"
model = "whole?answer=canonical"

[[routes]]
model = "chat"
targets = ["a"]
cache = {{ ttl_s = 60 }}

[[routes]]
model = "plain"
targets = ["a"]

[[routes]]
model = "slow"
targets = ["slow"]

[[routes]]
model = "failover"
targets = ["flaky", "a"]

[[routes]]
model = "rescue"
targets = ["cut", "whole"]

[[clients]]
name = "rpm"
key = "key-rpm-0000"
limits = {{ rpm = 20 }}

[[clients]]
name = "tpm"
key = "key-tpm-0000"
limits = {{ tpm = 6000 }}

[[clients]]
name = "budget"
key = "key-budget-0"
budget = {{ daily_usd = 0.5 }}

[[clients]]
name = "one"
key = "key-one-0000"
limits = {{ concurrency = 1 }}

[[clients]]
name = "free"
key = "key-free-000"
limits = {{ rpm = 100000 }}
"#
    )
}

/// Two routers on one Redis.
fn fleet(dir: &std::path::Path, redis: &Redis, on_error: [&str; 2]) -> (Proc, Proc, Proc) {
    let mock = support::mock_upstream(dir);
    let nodes: Vec<Proc> = on_error
        .iter()
        .enumerate()
        .map(|(i, on_error)| {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            router(&node_dir, &config(&mock.url, &redis.url(), on_error), &[])
        })
        .collect();
    let mut nodes = nodes.into_iter();
    (mock, nodes.next().unwrap(), nodes.next().unwrap())
}

async fn ask(node: &Proc, key: &str, body: &Value) -> Answer {
    post(&node.url, "/v1/chat/completions", body, &[("authorization", &format!("Bearer {key}"))]).await
}

fn hello(model: &str, prompt: &str) -> Value {
    json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": prompt}]})
}

fn remaining_tokens(a: &Answer) -> u64 {
    a.header("x-ratelimit-remaining-tokens").unwrap_or_else(|| panic!("no token headers: {:?}", a.headers)).parse().unwrap()
}

/// A request's settlement reaches the store before the same node's next
/// admission: a client that waits for each answer never meets its own
/// concurrency of one.
#[tokio::test(flavor = "multi_thread")]
async fn one_request_at_a_time_never_meets_a_concurrency_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(None);
    let (mock, a, _b) = fleet(dir.path(), &redis, ["reject", "reject"]);
    for i in 0..100 {
        let answer = ask(&a, "key-one-0000", &hello("plain", &format!("turn {i}"))).await;
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
    }
    // Two at once: the second is over the limit (the count is live, not just open).
    support::clear(&mock).await;
    let url = a.url.clone();
    let held = tokio::spawn(async move {
        post(&url, "/v1/chat/completions", &hello("slow", "held"), &[("authorization", "Bearer key-one-0000")]).await
    });
    // Admitted once the upstream has it (which holds it a second).
    let started = Instant::now();
    while !support::received(&mock).await.iter().any(|r| r.to_string().contains("held")) {
        assert!(started.elapsed() < Duration::from_secs(10), "the held request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = ask(&a, "key-one-0000", &hello("plain", "meanwhile")).await;
    assert_eq!(second.status, 429, "{}", second.body);
    let first = held.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
}

/// The same while other clients load the node: their admissions carry the
/// settlement, on other connections than the client's next admission, which
/// may reach the store before that settlement does; the admission must not
/// count a request whose settlement this node has sent.
#[tokio::test(flavor = "multi_thread")]
async fn one_request_at_a_time_never_meets_a_concurrency_of_one_while_others_load_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(None);
    let (_mock, a, _b) = fleet(dir.path(), &redis, ["reject", "reject"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..12 {
        let (url, stop) = (a.url.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = hello("plain", &format!("load {t} {i}"));
                let answer = post(&url, "/v1/chat/completions", &body, &[("authorization", "Bearer key-free-000")]).await;
                assert_eq!(answer.status, 200, "{}", answer.body);
                i += 1;
            }
            i
        }));
    }
    let mut refused = Vec::new();
    for i in 0..300 {
        let answer = ask(&a, "key-one-0000", &hello("plain", &format!("turn {i}"))).await;
        if answer.status != 200 {
            refused.push((i, answer.status));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut others = 0;
    for task in load {
        others += task.await.unwrap();
    }
    println!("{others} requests of other clients meanwhile");
    assert!(others > 300, "the other clients' load did not run alongside ({others} requests)");
    assert!(refused.is_empty(), "refused one request at a time: {refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_share_one_limit_under_concurrent_load() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(None);
    let (_mock, a, b) = fleet(dir.path(), &redis, ["local", "local"]);
    // Both nodes connected to the store before the load.
    for node in [&a, &b] {
        assert_eq!(ask(node, "key-free-000", &hello("chat", "warm")).await.status, 200);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..80 {
        let url = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
        tasks.push(tokio::spawn(async move {
            let body = hello("chat", &format!("load {i}"));
            let a = post(&url, "/v1/chat/completions", &body, &[("authorization", "Bearer key-rpm-0000")]).await;
            (i % 2, a)
        }));
    }
    let mut admitted = [0u32; 2];
    for task in tasks {
        let (node, answer) = task.await.unwrap();
        match answer.status {
            200 => admitted[node] += 1,
            429 => {
                // The store's verdict, in OpenAI's words: when to come back (one request refills in 3 s).
                let retry_after: u64 = answer.header("retry-after").expect("retry-after").parse().unwrap();
                assert!((1..=3).contains(&retry_after), "{:?}", answer.headers);
                assert_eq!(answer.header("x-ratelimit-remaining-requests"), Some("0"), "{:?}", answer.headers);
                assert_eq!(answer.json()["error"]["code"], "rate_limit_exceeded", "{}", answer.body);
            }
            other => panic!("status {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA on the store is exact: the 20-request burst, plus what refilled
    // (one every 3 s) while the load ran. Two nodes counting apart would
    // admit up to 40.
    let overshoot = (elapsed / 3.0).floor() as u32 + 1;
    let total = admitted[0] + admitted[1];
    println!("admitted {admitted:?} of 80 in {elapsed:.2} s");
    assert!((20..=20 + overshoot).contains(&total), "admitted {admitted:?} in {elapsed:.2} s");
    assert_eq!(redis.cli(&["ZCARD", "switchyard:q:client:rpm:lease"]), "0", "every reservation settled");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_spent_on_either_node_is_spent_for_both() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(None);
    let (_mock, a, b) = fleet(dir.path(), &redis, ["local", "local"]);
    let (mut spent, mut answered) = (0.0, 0u32);
    loop {
        let node = if answered % 2 == 0 { &a } else { &b };
        let answer = ask(node, "key-budget-0", &hello("failover", &format!("spend {answered}"))).await;
        if answer.status == 429 {
            assert_eq!(answer.json()["error"]["code"], "insufficient_quota");
            break;
        }
        assert_eq!(answer.status, 200, "{}", answer.body);
        let usage = &answer.json()["usage"];
        spent += (usage["prompt_tokens"].as_f64().unwrap() * 1000.0 + usage["completion_tokens"].as_f64().unwrap() * 2000.0) / 1e6;
        answered += 1;
        assert!(answered < 100, "the budget never ran out");
        // Settlement is on its way when the answer is; let it land.
        redis.until_settled().await;
    }
    let per_answer = spent / f64::from(answered);
    // Each answer failed over (two attempts): counted once, so the fleet
    // stops where one node alone would.
    assert!(spent >= 0.5 && spent < 0.5 + per_answer, "spent {spent} in {answered} answers");
    let (day, _) = switchyard::quota::windows(switchyard::quota::unix_now());
    let recorded: f64 = redis.cli(&["GET", &format!("switchyard:q:client:budget:d:{day}")]).parse::<f64>().unwrap() / 1e9;
    assert!((recorded - spent).abs() < 1e-6, "the store holds {recorded}, the answers cost {spent}");
    // Refused on the other node too.
    let other = if answered % 2 == 0 { &b } else { &a };
    assert_eq!(ask(other, "key-budget-0", &hello("chat", "one more")).await.status, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn failovers_and_rescues_settle_once_and_a_cached_answer_serves_both_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(None);
    let (mock, a, b) = fleet(dir.path(), &redis, ["local", "local"]);
    // A failover on node a: two attempts, one settlement.
    let started = Instant::now();
    let first = ask(&a, "key-tpm-0000", &hello("failover", "tokens once")).await;
    assert_eq!((first.status, first.header("x-switchyard-attempts")), (200, Some("2")), "{}", first.body);
    let reserved = 6000 - remaining_tokens(&first);
    let used = first.json()["usage"]["total_tokens"].as_u64().unwrap();
    redis.until_settled().await;
    // A stream that breaks after 3 chunks and is rescued on another backend, on node b.
    let mut body = hello("rescue", "tokens once");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let stream = ask(&b, "key-tpm-0000", &body).await;
    assert!(stream.body.contains(": rescued:") && stream.body.contains("[DONE]"), "{}", stream.body);
    let reserved_stream = 6000 - used - remaining_tokens(&stream);
    let usage =
        stream.events().iter().filter_map(|e| serde_json::from_str::<Value>(e).ok()).find_map(|c| c["usage"]["total_tokens"].as_u64());
    let stream_used = usage.expect("the rescued stream reports usage");
    redis.until_settled().await;
    let third = ask(&a, "key-tpm-0000", &hello("chat", "after")).await;
    let expected = 6000 - used - stream_used - reserved;
    let left = remaining_tokens(&third);
    // Refill: 100 tokens a second while the test ran.
    let refilled = (started.elapsed().as_secs_f64() * 100.0).ceil() as u64 + 1;
    assert!(
        (expected..=expected + refilled).contains(&left),
        "{left} left, expected {expected} (+ refill); reserved {reserved}/{reserved_stream}"
    );

    // The cache: written through a, a hit on b.
    support::clear(&mock).await;
    let cold = json!({"model": "chat", "temperature": 0, "messages": [{"role": "user", "content": "shared cache"}]});
    let miss = ask(&a, "key-free-000", &cold).await;
    assert_eq!(miss.header("x-switchyard-cache"), Some("miss"));
    // The write to the store leaves after the answer.
    redis.until_cached().await;
    let hit = ask(&b, "key-free-000", &cold).await;
    assert_eq!(hit.header("x-switchyard-cache"), Some("hit"), "node b found node a's answer");
    assert_eq!(hit.json(), miss.json());
    assert_eq!(support::received(&mock).await.len(), 1, "one upstream call for both nodes");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_stopped_mid_run_then_back() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(None);
    // Node a counts locally while the store is down; node b refuses.
    let (_mock, a, b) = fleet(dir.path(), &redis, ["local", "reject"]);
    for node in [&a, &b] {
        assert_eq!(ask(node, "key-free-000", &hello("chat", "before")).await.status, 200);
    }
    let port = redis.stop();
    // Over more than two seconds, so that each node tries the store again
    // after its one-second backoff, more than once.
    for i in 0..5 {
        let local = ask(&a, "key-free-000", &hello("chat", &format!("down {i}"))).await;
        assert_eq!(local.status, 200, "on_shared_error = local serves: {}", local.body);
        let refused = ask(&b, "key-free-000", &hello("chat", &format!("down {i}"))).await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.json()["error"]["code"], "limits_unavailable");
        assert!(refused.header("retry-after").is_some());
        // The client is not told where the store is, nor the pool's words.
        let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(!message.contains(&port.to_string()) && !message.contains("127.0.0.1") && !message.contains("object"), "{message}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    for node in [&a, &b] {
        let metrics =
            support::client().get(format!("{}/metrics", node.admin_url.as_ref().unwrap())).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("switchyard_shared_store_errors_total{op=\"admit\"}"), "{metrics}");
        // One log line for the outage, however many calls failed in it.
        let logs = node.logs();
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR") && l.contains("shared store")).collect();
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "the log names the store: {}", lines[0]);
        assert!(!lines[0].contains("creating a new object"), "the connector's words, not the pool's: {}", lines[0]);
    }
    // Back on the same port: both nodes count on it again.
    let redis = Redis::start(Some(port));
    let started = Instant::now();
    loop {
        let answer = ask(&b, "key-free-000", &hello("chat", "after")).await;
        if answer.status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "node b never recovered: {}", answer.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ask(&a, "key-free-000", &hello("chat", "after")).await.status, 200);
    let rt = redis.cli(&["HGET", "switchyard:q:client:free", "rt"]);
    assert!(rt.parse::<f64>().is_ok(), "the count is on the store again: {rt:?}");
    b.until_logged("the shared store answers again", 1).await;
}
