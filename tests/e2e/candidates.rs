//! Shipping a policy safely, through the running router: a shadow decides
//! every request off its path and is compared; a canary serves a share and
//! is rolled back on its numbers, or promoted; a kept version comes back.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{post, router, Proc};
use switchyard_tests::artifacts;

const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// A router whose `auto` route is `cheapest` (cheapest-healthy: picks
/// `cheap`), with `files` (name, component) beside it in the policy dir.
fn candidates_router(dir: &std::path::Path, files: &[(&str, &str)], canary: &str) -> Proc {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(artifacts::CHEAPEST_HEALTHY, policies.join("cheapest.wasm")).unwrap();
    for (name, from) in files {
        std::fs::copy(from, policies.join(format!("{name}.wasm"))).unwrap();
    }
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "${{ADMIN_TOKEN}}"

[decision_log]
path = "decisions.jsonl"

[policies]
dir = "policies"

[policies.canary]
{canary}

[[routes]]
model = "auto"
policy = "cheapest"

[[backends]]
name = "dear"
provider = "mock"
input_price = 5.0
output_price = 10.0

[[backends]]
name = "cheap"
provider = "mock"
input_price = 1.0
output_price = 2.0
"#
    );
    router(dir, &config, &[("ADMIN_TOKEN", ADMIN_TOKEN)])
}

async fn admin(router: &Proc, path: &str) -> Value {
    support::admin_json(router.admin_url.as_ref().unwrap(), path, ADMIN_TOKEN).await
}

async fn admin_post(router: &Proc, path: &str) -> (u16, Value) {
    let response = support::client()
        .post(format!("{}{path}", router.admin_url.as_ref().unwrap()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn policy(router: &Proc, name: &str) -> Value {
    admin(router, "/admin/policies").await["policies"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap()
}

fn ask(user: &str) -> Value {
    json!({"model": "auto", "user": user, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_is_compared_and_never_changes_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    // `observer` picks the first backend (`dear`): it disagrees every time.
    let router = candidates_router(dir.path(), &[("cheapest.shadow", artifacts::OBSERVER)], "");
    for i in 0..20 {
        let a = post(&router.url, "/v1/chat/completions", &ask(&format!("u{i}")), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("cheap")), "{}", a.body);
        assert!(a.header("x-switchyard-policy").unwrap().starts_with("cheapest@"));
    }
    let started = Instant::now();
    let shadow = loop {
        let shadow = policy(&router, "cheapest").await["candidates"]["shadow"].clone();
        if shadow["differed"] == 20 || started.elapsed() > Duration::from_secs(10) {
            break shadow;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (shadow["differed"].as_u64(), shadow["agreed"].as_u64(), shadow["failed"].as_u64(), shadow["running"].as_bool()),
        (Some(20), Some(0), Some(0), Some(true)),
        "{shadow}"
    );
    let records = support::decision_records(&dir.path().join("decisions.jsonl"), 40).await;
    let differing: Vec<&Value> = records.iter().filter(|r| r.get("shadow").is_some()).collect();
    assert_eq!(differing.len(), 20);
    assert_eq!((differing[0]["shadow"]["served"].as_str(), differing[0]["shadow"]["would"].as_str()), (Some("cheap"), Some("dear")));
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_ref().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"switchyard_shadow_decisions_total{policy="cheapest.shadow",result="differed"} 20"#), "{metrics}");
    // Its file removed, the shadow stops; its last tally stays, marked as not running.
    std::fs::remove_file(dir.path().join("policies/cheapest.shadow.wasm")).unwrap();
    router.until_logged("candidate's file removed; it no longer runs", 1).await;
    let shadow = policy(&router, "cheapest").await["candidates"]["shadow"].clone();
    assert_eq!((shadow["differed"].as_u64(), shadow["running"].as_bool()), (Some(20), Some(false)), "{shadow}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_that_traps_or_loops_is_counted_and_the_answers_stand() {
    let dir = tempfile::tempdir().unwrap();
    let router = candidates_router(dir.path(), &[("cheapest.shadow", artifacts::HOSTILE)], "");
    for mode in ["panic", "loop", "panic", "loop"] {
        let a = post(&router.url, "/v1/chat/completions", &ask("u"), &[("x-switchyard-mode", mode)]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("cheap")), "{mode}: {}", a.body);
    }
    let started = Instant::now();
    let shadow = loop {
        let shadow = policy(&router, "cheapest").await["candidates"]["shadow"].clone();
        if shadow["failed"] == 4 || started.elapsed() > Duration::from_secs(20) {
            break shadow;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shadow["failed"], 4, "{shadow}");
    // The serving policy never failed.
    let serving = policy(&router, "cheapest").await;
    assert_eq!(serving["stats"]["failures"], json!({}), "{serving}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worse_canary_is_rolled_back_on_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    // The canary sends its share to `dear`: five times the cost a request.
    let router = candidates_router(dir.path(), &[("cheapest.canary", artifacts::OBSERVER)], "share = 50.0\nmin_requests = 20");
    let mut on_canary = 0;
    let mut i = 0;
    let started = Instant::now();
    loop {
        let canary = policy(&router, "cheapest").await["candidates"]["canary"].clone();
        if canary["state"] == "rolled_back" || started.elapsed() > Duration::from_secs(30) {
            assert_eq!(canary["state"], "rolled_back", "{canary}");
            assert!(canary["reason"].as_str().unwrap().contains("mean cost"), "{canary}");
            // The windows it was judged on: means, and the totals behind them.
            let (candidate, stable) = (&canary["candidate"], &canary["stable"]);
            let mean = |w: &Value, key: &str| w[key].as_f64().unwrap_or_else(|| panic!("{key}: {w}"));
            let total_over_requests = mean(candidate, "total_cost_usd") / mean(candidate, "requests");
            assert!((mean(candidate, "mean_cost_usd") - total_over_requests).abs() < 1e-12, "{canary}");
            assert!(mean(candidate, "mean_cost_usd") > 4.0 * mean(stable, "mean_cost_usd"), "{canary}");
            assert!(mean(stable, "mean_latency_ms") < mean(stable, "total_latency_ms") || mean(stable, "requests") <= 1.0, "{canary}");
            break;
        }
        let a = post(&router.url, "/v1/chat/completions", &ask(&format!("u{i}")), &[]).await;
        assert_eq!(a.status, 200);
        let labels = a.header("x-switchyard-labels").unwrap_or_default().to_owned();
        if labels.contains("canary=candidate") {
            on_canary += 1;
            assert_eq!(a.header("x-switchyard-backend"), Some("dear"));
            assert!(a.header("x-switchyard-policy").unwrap().starts_with("cheapest.canary@"));
        } else {
            // The stable side, or no canary any more: the rollback may land
            // between the check above and this request.
            assert_eq!(a.header("x-switchyard-backend"), Some("cheap"), "{labels}");
        }
        i += 1;
    }
    assert!(on_canary >= 20, "the canary served its share: {on_canary} of {i}");
    // Its file is parked, so that a restart does not bring it back.
    assert!(dir.path().join("policies/cheapest.canary.wasm.rolled-back").exists());
    assert!(!dir.path().join("policies/cheapest.canary.wasm").exists());
    // Rolled back: everything is the stable version's again.
    for j in 0..20 {
        let a = post(&router.url, "/v1/chat/completions", &ask(&format!("u{j}")), &[]).await;
        assert_eq!(a.header("x-switchyard-backend"), Some("cheap"));
        assert!(!a.header("x-switchyard-labels").unwrap_or_default().contains("canary"));
    }
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_ref().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"switchyard_canary_transitions_total{policy="cheapest.canary",result="rolled_back"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_canary_is_promoted_and_a_kept_version_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    // Another policy as the canary, promoted by hand.
    let router = candidates_router(dir.path(), &[("cheapest.canary", artifacts::STICKY_SESSION)], "share = 50.0\nmin_requests = 5");
    let stable = policy(&router, "cheapest").await["version"].as_str().unwrap().to_owned();
    let canary = policy(&router, "cheapest.canary").await["version"].as_str().unwrap().to_owned();
    assert_ne!(stable, canary);
    let (status, body) = admin_post(&router, "/admin/policies/cheapest/promote").await;
    assert_eq!((status, body["serving"].as_str()), (200, Some(canary.as_str())), "{body}");
    assert!(!dir.path().join("policies/cheapest.canary.wasm").exists(), "the canary's file replaced the policy's");
    let promoted = policy(&router, "cheapest").await;
    assert_eq!(promoted["version"], canary.as_str());
    assert_eq!(promoted["kept_versions"], json!([stable]), "{promoted}");
    assert_eq!(promoted["activated_by_hand"], false, "{promoted}");
    let a = post(&router.url, "/v1/chat/completions", &ask("u1"), &[]).await;
    assert!(a.header("x-switchyard-policy").unwrap().ends_with(&canary), "{:?}", a.header("x-switchyard-policy"));

    // An instant rollback to the kept version, and clear refusals.
    let (status, body) = admin_post(&router, &format!("/admin/policies/cheapest/activate?version={stable}")).await;
    assert_eq!((status, body["serving"].as_str()), (200, Some(stable.as_str())), "{body}");
    let a = post(&router.url, "/v1/chat/completions", &ask("u1"), &[]).await;
    assert!(a.header("x-switchyard-policy").unwrap().ends_with(&stable));
    // A configuration reload that changes the backends reloads the version
    // activated by hand with them, not the file's (before: the file's
    // version came back silently).
    let file = dir.path().join("switchyard.toml");
    let config = std::fs::read_to_string(&file).unwrap();
    support::replace_file(&file, &config.replace("output_price = 2.0", "output_price = 3.0"));
    let (status, body) = admin_post(&router, "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    let serving = policy(&router, "cheapest").await;
    assert_eq!(serving["version"], stable.as_str(), "{serving}");
    assert_eq!(serving["kept_versions"], json!([canary]), "{serving}");
    assert_eq!(serving["activated_by_hand"], true, "{serving}");
    let a = post(&router.url, "/v1/chat/completions", &ask("u1"), &[]).await;
    assert!(a.header("x-switchyard-policy").unwrap().ends_with(&stable), "{:?}", a.header("x-switchyard-policy"));
    router.until_logged("version activated by hand reloaded with the new configuration", 1).await;
    let (status, body) = admin_post(&router, "/admin/policies/cheapest/activate?version=0000").await;
    assert_eq!(status, 409);
    assert!(body["error"]["message"].as_str().unwrap().contains("no kept version 0000"), "{body}");
    let (status, body) = admin_post(&router, "/admin/policies/cheapest/rollback").await;
    assert_eq!((status, body["error"]["message"].as_str()), (409, Some("no canary `cheapest.canary` is serving")), "{body}");
    // The request's own mistakes: no version, an action there is not.
    let (status, body) = admin_post(&router, "/admin/policies/cheapest/activate").await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("version")), "{body}");
    let (status, body) = admin_post(&router, "/admin/policies/cheapest/explode").await;
    assert_eq!(status, 404, "{body}");
    // A policy the router does not know is not found, whatever the action.
    for action in ["rollback", "promote", "activate?version=0000"] {
        let (status, body) = admin_post(&router, &format!("/admin/policies/nope/{action}")).await;
        assert_eq!(status, 404, "{action}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("no policy `nope`"), "{body}");
    }
    assert_eq!(policy(&router, "cheapest").await["candidates"]["canary"]["state"], "promoted");

    // The policy's file deleted: its requests are still served, by the
    // version loaded (before: it was unloaded, and every request failed).
    std::fs::remove_file(dir.path().join("policies/cheapest.wasm")).unwrap();
    router.until_logged("policy file removed; the loaded version serves on", 1).await;
    let a = post(&router.url, "/v1/chat/completions", &ask("u1"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header("x-switchyard-policy").unwrap().ends_with(&stable), "{:?}", a.header("x-switchyard-policy"));
    assert_eq!(policy(&router, "cheapest").await["kept_versions"], json!([canary]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_canary_is_promoted_after_its_window_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    // The same strategy, another build (cheapest-healthy as built against
    // contract 0.1): its windows are clean.
    let old = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/contract-0.1/cheapest-healthy.wasm");
    let router = candidates_router(dir.path(), &[("cheapest.canary", old)], "share = 50.0\nmin_requests = 5\nauto_promote = true");
    let canary = policy(&router, "cheapest.canary").await["version"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let mut i = 0;
    loop {
        let serving = policy(&router, "cheapest").await;
        if serving["version"] == canary.as_str() || started.elapsed() > Duration::from_secs(20) {
            assert_eq!(serving["version"], canary.as_str(), "promoted after a clean window: {serving}");
            break;
        }
        let a = post(&router.url, "/v1/chat/completions", &ask(&format!("u{i}")), &[]).await;
        assert_eq!((a.status, a.header("x-switchyard-backend")), (200, Some("cheap")));
        i += 1;
    }
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_ref().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"switchyard_canary_transitions_total{policy="cheapest.canary",result="promoted"} 1"#), "{metrics}");
}
