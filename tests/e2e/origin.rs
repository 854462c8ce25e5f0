//! Policies pulled from an origin and signed, through the running router:
//! an HTTP origin (the harness's), an OCI registry (Debian's
//! `docker-registry`), new versions followed, outages and garbage survived,
//! restarts served from the node's cache, signatures checked before compiling.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::origin::Origin;
use support::{post, Proc};
use switchyard::policy::signing::{digest, SigningKey};
use switchyard_tests::artifacts;

const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn key() -> SigningKey {
    SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap()
}

/// A router whose route `auto` is decided by policy `p`, pulled from
/// `source` into `dir/pulled`; `dear` is listed first (a policy that takes the
/// first backend picks it), `cheap` is cheaper.
fn origin_router(dir: &Path, source: &str, trusted: Option<&SigningKey>) -> Proc {
    origin_router_with(dir, source, trusted, &[])
}

/// [`origin_router`] with more environment variables.
fn origin_router_with(dir: &Path, source: &str, trusted: Option<&SigningKey>, env: &[(&str, &str)]) -> Proc {
    let keys = trusted.map(|k| format!("[policies.trusted_keys]\nrelease = \"{}\"\n", k.public_base64())).unwrap_or_default();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "${{ADMIN_TOKEN}}"

[policies]
source = "{source}"
dir = "pulled"
poll_interval_ms = 150

{keys}
[[routes]]
model = "auto"
policy = "p"

[[backends]]
name = "dear"
provider = "mock"
input_price = 5.0

[[backends]]
name = "cheap"
provider = "mock"
input_price = 1.0
"#
    );
    let env: Vec<(&str, &str)> = [("ADMIN_TOKEN", ADMIN_TOKEN)].into_iter().chain(env.iter().copied()).collect();
    support::router(dir, &config, &env)
}

async fn policies(router: &Proc) -> Value {
    support::admin_json(router.admin_url.as_deref().unwrap(), "/admin/policies", ADMIN_TOKEN).await
}

fn policy<'a>(all: &'a Value, name: &str) -> Option<&'a Value> {
    all["policies"].as_array().unwrap().iter().find(|p| p["name"] == name)
}

/// Waits until `check` holds for `/admin/policies` (10 s at most).
async fn until(router: &Proc, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let all = policies(router).await;
        if check(&all) {
            return all;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: not seen in 10 s; /admin/policies: {all:#}\n{}", router.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn serving(all: &Value, name: &str) -> Option<String> {
    policy(all, name).and_then(|p| p["digest"].as_str()).map(str::to_owned)
}

async fn served_by(router: &Proc) -> String {
    let answer = post(&router.url, "/v1/chat/completions", &support::chat("auto", false), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.header("x-switchyard-backend").unwrap().to_owned()
}

fn index(entries: &[(&str, &str, &[u8], Option<String>)]) -> Vec<u8> {
    let policies: Vec<Value> = entries
        .iter()
        .map(|(name, url, bytes, signature)| json!({"name": name, "url": url, "digest": digest(bytes), "signature": signature}))
        .collect();
    serde_json::to_vec(&json!({ "policies": policies })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_an_http_origin_through_new_versions_garbage_outages_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let signer = key();
    let (v1, v2) = (std::fs::read(artifacts::CHEAPEST_HEALTHY).unwrap(), std::fs::read(artifacts::OBSERVER).unwrap());
    let mut origin = Origin::start().await;
    origin.put("p/v1.wasm", v1.clone());
    origin.put("p/v2.wasm", v2.clone());
    origin.put("p/index.json", index(&[("p", "v1.wasm", &v1, Some(signer.sign(&v1)))]));
    let mut router = origin_router(dir.path(), &origin.url("p/index.json"), Some(&signer));

    let all = until(&router, "v1 serving", |a| serving(a, "p") == Some(digest(&v1))).await;
    assert_eq!(policy(&all, "p").unwrap()["signed_by"], "release");
    assert_eq!(served_by(&router).await, "cheap", "v1 is cheapest-healthy");
    // Unchanged polls are conditional: the origin answers 304.
    let (before, started) = (origin.not_modified(), Instant::now());
    while origin.not_modified() < before + 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "polls after the first are If-None-Match: {} 304s", origin.not_modified());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A new version is followed, the request path never without a policy:
    // requests sent all through the switch are all answered.
    let (url, done) = (router.url.clone(), std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let during = tokio::spawn({
        let done = done.clone();
        async move {
            let mut statuses = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(post(&url, "/v1/chat/completions", &support::chat("auto", false), &[]).await.status);
            }
            statuses
        }
    });
    origin.put("p/index.json", index(&[("p", "v2.wasm", &v2, Some(signer.sign(&v2)))]));
    until(&router, "v2 serving", |a| serving(a, "p") == Some(digest(&v2))).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = during.await.unwrap();
    assert!(!statuses.is_empty() && statuses.iter().all(|s| *s == 200), "answers during the switch: {statuses:?}");
    assert_eq!(served_by(&router).await, "dear", "v2 takes the first backend");

    // Garbage, each kind refused with the last good version serving.
    let not_wasm = b"this is not a component".to_vec();
    origin.put("p/garbage.wasm", not_wasm.clone());
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("an index that is not JSON", b"<html>oops</html>".to_vec(), "malformed"),
        (
            "bytes that are not the listed digest",
            serde_json::to_vec(&json!({"policies": [{"name": "p", "url": "v1.wasm", "digest": digest(b"other")}]})).unwrap(),
            "digest_mismatch",
        ),
        ("one name listed twice", index(&[("p", "v1.wasm", &v1, None), ("p", "v2.wasm", &v2, None)]), "conflict"),
        ("a name that is a path", index(&[("../p", "v1.wasm", &v1, None)]), "malformed"),
    ];
    for (case, body, kind) in cases {
        origin.put("p/index.json", body);
        let all = until(&router, case, |a| a["origin"]["last_error"]["kind"] == kind).await;
        assert_eq!(serving(&all, "p"), Some(digest(&v2)), "{case}: v2 keeps serving");
        assert_eq!(served_by(&router).await, "dear", "{case}");
    }
    // A signed component that does not compile: the registry refuses it.
    origin.put("p/index.json", index(&[("p", "garbage.wasm", &not_wasm, Some(signer.sign(&not_wasm)))]));
    let all = until(&router, "garbage refused, the origin itself answering well", |a| {
        policy(a, "p").is_some_and(|p| p["last_error"]["kind"] == "compile") && a["origin"]["last_error"].is_null()
    })
    .await;
    assert_eq!(serving(&all, "p"), Some(digest(&v2)));

    // An empty listing (a publishing mistake) removes nothing.
    let changed = all["origin"]["polls"]["changed"].as_u64().unwrap();
    origin.put("p/index.json", br#"{"policies": []}"#.to_vec());
    let all = until(&router, "an empty listing applied", |a| a["origin"]["polls"]["changed"].as_u64().unwrap() > changed).await;
    assert_eq!(serving(&all, "p"), Some(digest(&v2)), "an empty listing keeps p serving");
    assert_eq!(served_by(&router).await, "dear");

    // The origin goes down: still serving, the failure reported.
    origin.down();
    let all = until(&router, "outage seen", |a| a["origin"]["last_error"]["kind"] == "unreachable").await;
    assert_eq!(serving(&all, "p"), Some(digest(&v2)));
    assert_eq!(served_by(&router).await, "dear");
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_deref().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_policy_origin_polls_total{result=\"failed\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Restarted with the origin down: the last good version (v2, not the
    // garbage placed after it) serves from the node's cache.
    router.terminate();
    let router = origin_router(dir.path(), &origin.url("p/index.json"), Some(&signer));
    let status = support::client().get(format!("{}/readyz", router.admin_url.as_deref().unwrap())).send().await.unwrap().status();
    assert_eq!(status, 200, "ready at once from the cache: {}", router.logs());
    assert_eq!(serving(&policies(&router).await, "p"), Some(digest(&v2)));
    assert_eq!(served_by(&router).await, "dear");

    // The origin is back with v1: followed again.
    origin.put("p/index.json", index(&[("p", "v1.wasm", &v1, Some(signer.sign(&v1)))]));
    origin.up().await;
    until(&router, "v1 back", |a| serving(a, "p") == Some(digest(&v1)) && a["origin"]["last_error"].is_null()).await;
    assert_eq!(served_by(&router).await, "cheap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_holds_back_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (std::fs::read(artifacts::CHEAPEST_HEALTHY).unwrap(), std::fs::read(artifacts::OBSERVER).unwrap());
    let origin = Origin::start().await;
    for source in ["a", "b"] {
        origin.put(&format!("{source}/v1.wasm"), v1.clone());
        origin.put(&format!("{source}/v2.wasm"), v2.clone());
        origin.put(&format!("{source}/index.json"), index(&[(source, "v1.wasm", &v1, None)]));
    }
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${{ADMIN_TOKEN}}\"\n[policies]\nsource = [\"{}\", \"{}\"]\ndir = \"pulled\"\npoll_interval_ms = 150\n\
         [[routes]]\nmodel = \"auto\"\npolicy = \"b\"\n[[routes]]\nmodel = \"other\"\npolicy = \"a\"\n\
         [[backends]]\nname = \"dear\"\nprovider = \"mock\"\ninput_price = 5.0\n[[backends]]\nname = \"cheap\"\nprovider = \"mock\"\ninput_price = 1.0\n",
        origin.url("a/index.json"),
        origin.url("b/index.json")
    );
    let router = support::router(dir.path(), &config, &[("ADMIN_TOKEN", ADMIN_TOKEN)]);
    until(&router, "both at v1", |a| serving(a, "a") == Some(digest(&v1)) && serving(a, "b") == Some(digest(&v1))).await;

    // Each way one source can fail, while the other publishes: the other's
    // change serves, the failing one's policy stays as it was.
    // (case, a's index, b's index, the error seen, b's version then)
    type Case<'a> = (&'a str, Vec<u8>, Vec<u8>, &'a str, &'a [u8]);
    let cases: [Case; 3] = [
        ("a's index is garbage", b"<html>oops</html>".to_vec(), index(&[("b", "v2.wasm", &v2, None)]), "malformed", &v2),
        (
            "a's new component is missing",
            index(&[("a", "gone.wasm", b"never published", None)]),
            index(&[("b", "v1.wasm", &v1, None)]),
            "status",
            &v1,
        ),
        (
            "b also lists a",
            index(&[("a", "v2.wasm", &v2, None)]),
            index(&[("b", "v2.wasm", &v2, None), ("a", "v2.wasm", &v2, None)]),
            "conflict",
            &v2,
        ),
    ];
    for (case, a, b, kind, b_version) in cases {
        origin.put("a/index.json", a);
        origin.put("b/index.json", b);
        let want = digest(b_version);
        let all = until(&router, case, |all| serving(all, "b") == Some(want.clone()) && all["origin"]["last_error"]["kind"] == kind).await;
        assert_eq!(serving(&all, "a"), Some(digest(&v1)), "{case}: a stays");
        // v1 (cheapest-healthy) takes the cheap backend, v2 the first.
        assert_eq!(served_by(&router).await, if b_version == v2.as_slice() { "dear" } else { "cheap" }, "{case}");
    }
    // a fixed: followed again, and the error clears.
    origin.put("a/index.json", index(&[("a", "v2.wasm", &v2, None)]));
    origin.put("b/index.json", index(&[("b", "v2.wasm", &v2, None)]));
    until(&router, "a at v2", |all| serving(all, "a") == Some(digest(&v2)) && all["origin"]["last_error"].is_null()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_before_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (key(), key());
    let bytes = std::fs::read(artifacts::CHEAPEST_HEALTHY).unwrap();
    let policies_dir = dir.path().join("policies");
    std::fs::create_dir_all(&policies_dir).unwrap();
    let mut tampered = bytes.clone();
    tampered.extend_from_slice(b"\0"); // Still a component? It does not matter: refused before compiling.
                                       // (name, bytes, signature, why refused)
    type Case<'a> = (&'a str, &'a [u8], Option<String>, Option<&'a str>);
    let table: [Case; 5] = [
        ("unsigned", &bytes, None, Some("unsigned")),
        ("wrong-key", &bytes, Some(theirs.sign(&bytes)), Some("not from a trusted key")),
        ("tampered", &tampered, Some(ours.sign(&bytes)), Some("not from a trusted key")),
        ("garbled", &bytes, Some("not base64!".into()), Some("not the base64")),
        ("right-key", &bytes, Some(ours.sign(&bytes)), None),
    ];
    for (name, component, signature, _) in &table {
        std::fs::write(policies_dir.join(format!("{name}.wasm")), component).unwrap();
        if let Some(signature) = signature {
            std::fs::write(policies_dir.join(format!("{name}.wasm.sig")), signature).unwrap();
        }
    }
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${{ADMIN_TOKEN}}\"\n[policies]\ndir = \"policies\"\n[policies.trusted_keys]\nrelease = \"{}\"\n[[routes]]\nmodel = \"auto\"\npolicy = \"right-key\"\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n",
        ours.public_base64()
    );
    let router = support::router(dir.path(), &config, &[("ADMIN_TOKEN", ADMIN_TOKEN)]);
    let all = policies(&router).await;
    for (name, _, _, refusal) in &table {
        let p = policy(&all, name).unwrap_or_else(|| panic!("{name} missing: {all:#}"));
        match refusal {
            None => {
                assert_eq!(p["signed_by"], "release", "{name}: {p:#}");
                assert!(p["last_error"].is_null(), "{name}: {p:#}");
            }
            Some(reason) => {
                assert!(p["version"].is_null(), "{name} must not serve: {p:#}");
                assert_eq!(p["last_error"]["kind"], "signature", "{name}: {p:#}");
                assert!(p["last_error"]["message"].as_str().unwrap().contains(reason), "{name}: {p:#}");
                assert_eq!(p["signature_refusals"], 1, "{name}");
            }
        }
    }
    let metrics =
        support::client().get(format!("{}/metrics", router.admin_url.as_deref().unwrap())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchyard_policy_signature_refusals_total{policy=\"unsigned\"} 1"), "{metrics}");

    // A good signature arriving later loads the same bytes.
    std::fs::write(policies_dir.join("unsigned.wasm.sig"), ours.sign(&bytes)).unwrap();
    until(&router, "late signature", |a| policy(a, "unsigned").is_some_and(|p| p["signed_by"] == "release")).await;

    // A foreign signature over serving bytes: refused and shown, the version
    // verified earlier keeps serving; the good one back clears the error.
    std::fs::write(policies_dir.join("unsigned.wasm.sig"), theirs.sign(&bytes)).unwrap();
    let all = until(&router, "a foreign signature over serving bytes", |a| {
        policy(a, "unsigned").is_some_and(|p| p["last_error"]["kind"] == "signature")
    })
    .await;
    let p = policy(&all, "unsigned").unwrap();
    assert!(!p["version"].is_null() && p["signed_by"] == "release", "still serving: {p:#}");
    std::fs::write(policies_dir.join("unsigned.wasm.sig"), ours.sign(&bytes)).unwrap();
    until(&router, "the good signature back", |a| policy(a, "unsigned").is_some_and(|p| p["last_error"].is_null())).await;
}

#[test]
fn policy_keygen_sign_and_verify_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::BIN).args(args).current_dir(dir.path()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, out) = run(&["policy", "keygen", "--out", "release.pem"]);
    assert_eq!(code, Some(0), "{out}");
    let public = out.lines().find_map(|l| l.strip_prefix("release = \"")).unwrap().trim_end_matches('"').to_owned();
    // openssl reads the key, and derives the same public key (the README's recipe).
    let openssl = std::process::Command::new("openssl")
        .args(["pkey", "-in", "release.pem", "-pubout", "-outform", "DER"])
        .current_dir(dir.path())
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(openssl.status.success(), "{}", String::from_utf8_lossy(&openssl.stderr));
    let der = openssl.stdout;
    use base64::Engine as _;
    assert_eq!(base64::engine::general_purpose::STANDARD.encode(&der[der.len() - 32..]), public);
    let (code, out) = run(&["policy", "keygen", "--out", "release.pem"]);
    assert!(code != Some(0) && out.contains("never overwritten"), "never overwrites a key: {out}");
    std::fs::copy(artifacts::CHEAPEST_HEALTHY, dir.path().join("p.wasm")).unwrap();
    let (code, out) = run(&["policy", "sign", "p.wasm", "--key", "release.pem"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["policy", "verify", "p.wasm", "--trusted-key", &public]);
    assert_eq!((code, out.contains("signed by")), (Some(0), true), "{out}");
    std::fs::write(
        dir.path().join("switchyard.toml"),
        format!("[policies.trusted_keys]\nci = \"{public}\"\n[[backends]]\nname = \"a\"\nprovider = \"mock\"\n"),
    )
    .unwrap();
    let (code, out) = run(&["policy", "verify", "p.wasm", "--config", "switchyard.toml"]);
    assert_eq!((code, out.contains("signed by `ci`")), (Some(0), true), "{out}");
    let mut bytes = std::fs::read(dir.path().join("p.wasm")).unwrap();
    bytes.push(0);
    std::fs::write(dir.path().join("p.wasm"), bytes).unwrap();
    let (code, out) = run(&["policy", "verify", "p.wasm", "--trusted-key", &public]);
    assert_eq!((code, out.contains("REFUSED (untrusted)")), (Some(1), true), "{out}");
}

/// Debian's `docker-registry` on a free port, storage in `dir`.
struct Registry {
    child: std::process::Child,
    url: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn registry(dir: &Path) -> Registry {
    let bin = Path::new("/usr/bin/docker-registry");
    assert!(bin.exists(), "docker-registry missing: `apt-get install docker-registry` (scripts/test installs it)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .args(["serve", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while support::client().get(format!("{url}/v2/")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(10), "docker-registry did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Registry { child, url }
}

/// Pushes `component` as a WebAssembly component artifact (one
/// `application/wasm` layer) to `repository:tag`, signed in an annotation.
async fn push(registry: &str, repository: &str, tag: &str, component: &[u8], signature: &str) {
    let client = support::client();
    let upload = |bytes: Vec<u8>| {
        let client = client.clone();
        async move {
            let d = digest(&bytes);
            let started = client.post(format!("{registry}/v2/{repository}/blobs/uploads/")).send().await.unwrap();
            assert_eq!(started.status(), 202);
            let location = started.headers()["location"].to_str().unwrap().to_owned();
            let put = client
                .put(format!("{location}&digest={d}"))
                .header("content-type", "application/octet-stream")
                .body(bytes)
                .send()
                .await
                .unwrap();
            assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
            d
        }
    };
    let config = serde_json::to_vec(&json!({"architecture": "wasm", "os": "wasip2", "layerDigests": [digest(component)]})).unwrap();
    let config_size = config.len();
    let config_digest = upload(config).await;
    let layer_digest = upload(component.to_vec()).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/wasm", "digest": layer_digest, "size": component.len(),
            "annotations": {"org.opencontainers.image.title": "p.wasm"}}],
        "annotations": {"dev.switchyard.signature": signature},
    });
    let put = client
        .put(format!("{registry}/v2/{repository}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_tag_in_an_oci_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path()).await;
    let signer = key();
    let (v1, v2) = (std::fs::read(artifacts::CHEAPEST_HEALTHY).unwrap(), std::fs::read(artifacts::OBSERVER).unwrap());
    push(&registry.url, "policies/p", "prod", &v1, &signer.sign(&v1)).await;
    let source = format!("oci+http://{}/policies/p:prod", registry.url.trim_start_matches("http://"));
    let router = origin_router(dir.path(), &source, Some(&signer));
    until(&router, "v1 from the registry", |a| serving(a, "p") == Some(digest(&v1))).await;
    assert_eq!(served_by(&router).await, "cheap");

    // Retagged: followed. Then a tag signed by someone else: refused.
    push(&registry.url, "policies/p", "prod", &v2, &signer.sign(&v2)).await;
    until(&router, "v2 from the registry", |a| serving(a, "p") == Some(digest(&v2))).await;
    assert_eq!(served_by(&router).await, "dear");
    push(&registry.url, "policies/p", "prod", &v1, &key().sign(&v1)).await;
    let all =
        until(&router, "a foreign signature refused", |a| policy(a, "p").is_some_and(|p| p["last_error"]["kind"] == "signature")).await;
    assert_eq!(serving(&all, "p"), Some(digest(&v2)));
    assert_eq!(all["origin"]["polls"]["failed"], 0, "{all:#}");
}

/// Puts `component` in `origin` as an OCI artifact `repository:tag`, the way
/// a registry serves it (manifest by tag, layer blob by digest).
fn publish_oci(origin: &Origin, repository: &str, tag: &str, component: &[u8], signature: &str) {
    let layer = digest(component);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": digest(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/wasm", "digest": layer, "size": component.len()}],
        "annotations": {"dev.switchyard.signature": signature},
    });
    origin.put(&format!("v2/{repository}/blobs/{layer}"), component.to_vec());
    origin.put(&format!("v2/{repository}/manifests/{tag}"), serde_json::to_vec(&manifest).unwrap());
}

/// A registry that asks for a token (the Docker registry token protocol, as
/// Docker Hub and ghcr.io speak it): the node gets one from the token
/// service with the source's credentials (from the environment), sends the
/// credentials nowhere else, gets a new token when the old one is refused,
/// and without credentials says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_registry_that_asks_for_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let signer = key();
    let (v1, v2) = (std::fs::read(artifacts::CHEAPEST_HEALTHY).unwrap(), std::fs::read(artifacts::OBSERVER).unwrap());
    let origin = Origin::start().await;
    origin.require_token("bot", "s3cret-pat", "token-1");
    publish_oci(&origin, "team/policies/p", "prod", &v1, &signer.sign(&v1));
    let source = format!("oci+http://bot:${{REGISTRY_PASSWORD}}@{}/team/policies/p:prod", origin.host());
    let router = origin_router_with(dir.path(), &source, Some(&signer), &[("REGISTRY_PASSWORD", "s3cret-pat")]);
    let all = until(&router, "v1 through a token", |a| serving(a, "p") == Some(digest(&v1))).await;
    assert_eq!(origin.tokens_given(), 1, "one token, kept across polls");
    assert_eq!(origin.credentials_to_registry(), 0, "credentials go to the token service only");
    let shown = all["origin"].to_string();
    assert!(!shown.contains("s3cret") && shown.contains("bot:…@"), "{shown}");
    assert!(!router.logs().contains("s3cret"), "{}", router.logs());
    assert_eq!(served_by(&router).await, "cheap");

    // The token expires (a new one is needed) while a new version is published.
    origin.require_token("bot", "s3cret-pat", "token-2");
    publish_oci(&origin, "team/policies/p", "prod", &v2, &signer.sign(&v2));
    until(&router, "v2 through a new token", |a| serving(a, "p") == Some(digest(&v2)) && a["origin"]["last_error"].is_null()).await;
    assert_eq!((origin.tokens_given(), origin.credentials_to_registry()), (2, 0));
    assert_eq!(served_by(&router).await, "dear");

    // No credentials: refused by the token service, and the error says so.
    let other = tempfile::tempdir().unwrap();
    let anonymous = origin_router(other.path(), &format!("oci+http://{}/team/policies/p:prod", origin.host()), Some(&signer));
    let all = until(&anonymous, "the token service's refusal", |a| a["origin"]["last_error"]["kind"] == "status").await;
    let problem = all["origin"]["last_error"]["message"].as_str().unwrap();
    assert!(problem.contains("token service answered 401") && problem.contains("no credentials"), "{problem}");
    assert!(policy(&all, "p").is_none_or(|p| p["digest"].is_null()), "{all:#}");
}
