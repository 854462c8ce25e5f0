//! The `switchyard policy` commands, run as a user runs them: the real
//! binary, real compiled policies, files on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use switchyard_tests::{artifacts, js_modules, require_toolchain, Lang};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        // Keep the user's artifact cache out of the tests.
        .env("XDG_CACHE_HOME", std::env::temp_dir().join("switchyard-cli-test-cache"))
        .output()
        .unwrap()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name).display().to_string()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn help_lists_the_commands() {
    let out = switchyard(&["--help"]);
    assert!(out.status.success());
    assert!(text(&out).0.contains("policy"));
    assert!(text(&out).0.contains("config"));
    let out = switchyard(&["policy", "--help"]);
    let (stdout, _) = text(&out);
    for cmd in ["check", "eval", "status"] {
        assert!(stdout.contains(cmd), "{stdout}");
    }
}

#[test]
fn check_reports_world_imports_and_init() {
    let out = switchyard(&["policy", "check", artifacts::CHEAPEST_HEALTHY, "--backends", &fixture("backends.json")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("fits switchyard:policy/policy@0.2.0"), "{stdout}");
    assert!(stdout.contains("switchyard:policy/types@0.2.0") && stdout.contains("wasi:cli/stdout"), "{stdout}");
    assert!(stdout.contains("accepted its config"), "{stdout}");
    // A component built against 0.1 is checked against its own world.
    let old = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/contract-0.1/cheapest-healthy.wasm");
    let out = switchyard(&["policy", "check", old, "--backends", &fixture("backends.json")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stdout.contains("fits switchyard:policy/policy@0.1.0"), "{stdout}{stderr}");
}

#[test]
fn eval_prints_the_decision_as_json() {
    let out = switchyard(&[
        "policy",
        "eval",
        artifacts::CHEAPEST_HEALTHY,
        "--request",
        &fixture("request.json"),
        "--backends",
        &fixture("backends.json"),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let decision: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // llama-local is free but its circuit is open and its context too small
    // for nothing: it is last; gpt-4o-mini is the cheapest healthy.
    assert_eq!(
        decision,
        serde_json::json!({
            "kind": "route",
            "targets": [{"backend": "gpt-4o-mini"}, {"backend": "gpt-4o"}, {"backend": "llama-local"}],
            "labels": {"reason": "cheapest"}
        })
    );
}

#[test]
fn every_wrong_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &[u8]| -> String {
        let path: PathBuf = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let not_wasm = write("notwasm.wasm", b"hello");
    let bad_json = write("bad.json", b"{ nope");
    let typo_request = write("typo.json", br#"{"modle": "auto"}"#);
    let dup_backends = write("dup.json", br#"[{"name": "a"}, {"name": "a"}]"#);
    let refused = write("refused.json", br#"{"max_targets": 0}"#);
    let (req, backends) = (fixture("request.json"), fixture("backends.json"));
    let p = artifacts::CHEAPEST_HEALTHY;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["policy", "check", "/no/such/file.wasm"], "cannot read policy file /no/such/file.wasm"),
        (vec!["policy", "check", &not_wasm], "not a WebAssembly file"),
        (vec!["policy", "check", artifacts::OTHER_WORLD], "does not fit the `switchyard:policy/policy@0.2.0` world"),
        (vec!["policy", "check", p, "--config", &bad_json], "is not valid JSON"),
        (vec!["policy", "check", p, "--config", &refused], "config refused: invalid config: `max_targets` must be at least 1"),
        (vec!["policy", "eval", p, "--request", &typo_request, "--backends", &backends], "unknown field `modle`"),
        (vec!["policy", "eval", p, "--request", &req, "--backends", &dup_backends], "backend name `a` appears twice"),
        (vec!["policy", "eval", p, "--request", &bad_json, "--backends", &backends], "is not a valid request"),
        (vec!["policy", "eval", p, "--request", &req], "--backends"),
        (vec!["policy", "frobnicate"], "unrecognized subcommand"),
        (vec!["policy", "status", "/no/such/dir"], "/no/such/dir: no such directory of policies"),
        (vec!["config", "check", "/no/such/file.toml"], "/no/such/file.toml: cannot read: No such file"),
        (vec!["probe", "notaurl"], "invalid value 'notaurl' for '[URL]': not a URL"),
        (vec!["probe", "ftp://127.0.0.1/healthz"], "the scheme must be http or https, not `ftp`"),
    ];
    for (args, expected) in cases {
        let out = switchyard(&args);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    }
}

#[test]
fn status_shows_serving_and_failed_policies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::CHEAPEST_HEALTHY, dir.path().join("cheap.wasm")).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"junk").unwrap();
    let out = switchyard(&["policy", "status", dir.path().to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("cheap") && l.contains("serving")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("broken") && l.contains("FAILED") && l.contains("not a WebAssembly file")), "{stdout}");
}

fn run_in(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The new policy in `dir` checks, and decides on the example request and
/// backends `policy new` wrote next to it: the cheapest capable healthy one first.
fn check_passes(wasm: &Path, dir: &Path) {
    let out = switchyard(&["policy", "check", wasm.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("accepted its config"));
    let (request, backends) = (dir.join("request.json"), dir.join("backends.json"));
    let out = switchyard(&["policy", "eval", wasm.to_str().unwrap(), "-r", request.to_str().unwrap(), "-b", backends.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let decision: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(decision["targets"][0]["backend"], "gpt-4o-mini", "{}: {decision}", dir.display());

    // A request with an image goes only to a backend with vision, however cheap the others.
    let (request, backends) = (dir.join("image-request.json"), dir.join("image-backends.json"));
    std::fs::write(&request, r#"{"model": "auto", "messages": [{"role": "user", "text": "What is this?", "has_image": true}]}"#).unwrap();
    std::fs::write(
        &backends,
        r#"[{"name": "cheap-text", "input_price": 0.1}, {"name": "seeing", "input_price": 3.0, "capabilities": {"vision": true}}]"#,
    )
    .unwrap();
    let out = switchyard(&["policy", "eval", wasm.to_str().unwrap(), "-r", request.to_str().unwrap(), "-b", backends.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let decision: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(decision["targets"], serde_json::json!([{"backend": "seeing"}]), "{}: {decision}", dir.display());
}

#[test]
fn policy_new_scaffolds_policies_that_build_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let new = |name: &str, lang: &str| {
        let out = switchyard(&["policy", "new", name, "--lang", lang, "--dir", dir.path().to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out).1);
        dir.path().join(name)
    };

    let rust = new("route-rust", "rust");
    let target = root.join("target/guests");
    run_in(&rust, "cargo", &["build", "--release", "--target", "wasm32-wasip2", "--target-dir", target.to_str().unwrap()]);
    check_passes(&target.join("wasm32-wasip2/release/route_rust.wasm"), &rust);

    require_toolchain(Lang::Python);
    let py = new("route-python", "python");
    run_in(&py, "componentize-py", &["-d", "wit", "-w", "policy", "componentize", "app", "-o", "route-python.wasm"]);
    check_passes(&py.join("route-python.wasm"), &py);

    require_toolchain(Lang::JavaScript);
    let js = new("route-js", "js");
    std::os::unix::fs::symlink(js_modules(), js.join("node_modules")).unwrap();
    run_in(&js, "node", &["build.mjs"]);
    check_passes(&js.join("route-js.wasm"), &js);

    for (args, message) in [
        (vec!["policy", "new", "Bad_Name", "--lang", "rust"], "is not a policy name"),
        (vec!["policy", "new", "route-rust", "--lang", "rust", "--dir", dir.path().to_str().unwrap()], "already exists"),
        (vec!["policy", "new", "x", "--lang", "cobol"], "invalid value 'cobol'"),
    ] {
        let out = switchyard(&args);
        assert!(!out.status.success());
        assert!(text(&out).1.contains(message), "{args:?}: {}", text(&out).1);
    }
}

#[test]
fn config_check_says_what_would_serve_and_print_default_starts_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = switchyard(&["config", "print-default"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let default = text(&out).0;
    assert!(default.contains("[[routes]]") && default.contains("cheapest-healthy"), "{default}");

    // The embedded default, written to a file, checks: every route serves;
    // checking writes nothing (no decision log is opened).
    let file = dir.path().join("switchyard.toml");
    std::fs::write(&file, format!("{default}\n[decision_log]\npath = \"decisions.jsonl\"\n")).unwrap();
    let out = switchyard(&["config", "check", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("valid") && stdout.contains("-> cheapest-healthy (serving "), "{stdout}");
    assert!(stdout.contains("mock-private") && stdout.contains("tags=private"), "{stdout}");
    assert!(!dir.path().join("decisions.jsonl").exists());
    // A decision log `serve` could not open fails the check too, named as `serve` names it.
    for (path, problem) in [("no/such/dir/decisions.jsonl", "its directory does not exist"), (".", "it is a directory")] {
        std::fs::write(&file, format!("{default}\n[decision_log]\npath = \"{path}\"\n")).unwrap();
        let out = switchyard(&["config", "check", file.to_str().unwrap()]);
        let stderr = text(&out).1;
        assert!(!out.status.success() && stderr.contains("decision_log.path: cannot open") && stderr.contains(problem), "{path}: {stderr}");
    }
    // A password or query in a backend's URL (secrets from the environment) is not printed.
    std::fs::write(
        &file,
        "[[backends]]\nname = \"b\"\nprovider = \"openai\"\nbase_url = \"http://u:p4ss@127.0.0.1:1/v1?key=s3cret\"\nmodel = \"m\"\n",
    )
    .unwrap();
    let out = switchyard(&["config", "check", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("http://u:***@127.0.0.1:1/v1?***"), "{stdout}{stderr}");
    assert!(!stdout.contains("p4ss") && !stdout.contains("s3cret"), "{stdout}");

    // A route naming a policy that does not exist: said, and a failing exit.
    std::fs::write(&file, default.replacen("policy = \"cheapest-healthy\"", "policy = \"no-such-policy\"", 1)).unwrap();
    let out = switchyard(&["config", "check", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.contains("-> no-such-policy (NOT FOUND"), "{stdout}");
    assert!(stderr.contains("route `auto` names policy `no-such-policy`"), "{stderr}");

    // An invalid file: the file, the key and the problem.
    std::fs::write(&file, "[server]\nlisen = 1\n").unwrap();
    let out = switchyard(&["config", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("server.lisen (line 2, column 1)"), "{}", text(&out).1);
}

/// `RUST_LOG` is input too: a value the router cannot read is said on
/// stderr and the router logs at `info`; one it can read sets the level.
#[test]
fn a_log_level_it_cannot_read_is_said_and_info_is_used() {
    use std::io::BufRead;
    for (value, said, info) in [("policy=loud", true, true), ("warn,policy=debug", false, false), ("", false, true)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("XDG_CACHE_HOME", std::env::temp_dir().join("switchyard-cli-test-cache"))
            .env("RUST_LOG", value)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(line.starts_with("switchyard listening on"), "RUST_LOG={value:?}: {line}{stderr}");
        assert_eq!(stderr.contains(&format!("RUST_LOG={value:?} is not a list")), said, "RUST_LOG={value:?}:\n{stderr}");
        // The embedded default's policy is loaded, at `info`, before the router listens.
        assert_eq!(stderr.contains("policy loaded"), info, "RUST_LOG={value:?}:\n{stderr}");
    }
}

/// Under an address-space limit too small for the policy instance pool, the
/// router does not start, and says what the pool reserves and which limit
/// to raise.
#[test]
fn an_address_space_limit_too_small_for_the_policy_pool_is_named() {
    // `timeout`: were the limit ignored, the server would serve on.
    let out = Command::new("sh")
        .args(["-c", r#"ulimit -v 8000000 && exec timeout 30 "$0" serve --listen 127.0.0.1:0"#, env!("CARGO_BIN_EXE_switchyard")])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("instance pool reserves address space") && stderr.contains("ulimit -v"), "{stderr}");
}

/// A reader that went away is not a failure of the command: a report cut
/// by `| head` ends quietly with status 0 (before: a panic, status 101),
/// and a server whose stdout is closed serves on (before: it panicked while
/// printing the address it listens on).
#[test]
fn a_closed_stdout_neither_panics_a_command_nor_stops_the_server() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    // A pipe whose reading end is closed: every write to it fails (EPIPE).
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard")).args(["config", "print-default"]).stdout(closed()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{:?}: {stderr}", out.status);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("XDG_CACHE_HOME", std::env::temp_dir().join("switchyard-cli-test-cache"))
        .stdout(closed())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let answer = loop {
        let mut got = String::new();
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
            let _ = c.read_to_string(&mut got);
        }
        if got.starts_with("HTTP/1.1 200") || server.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(30) {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let running = server.try_wait().unwrap().is_none();
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let out = server.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(running && answer.starts_with("HTTP/1.1 200"), "{answer}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
