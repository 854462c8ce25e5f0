//! Hot reload through the registry and its directory watcher, with threads
//! deciding in a loop the whole time: no decision may fail, the new version
//! must become visible, and a broken file must never serve.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use switchyard::policy::{
    watch, Decision, PolicyErrorKind, PolicyRegistry, PolicyRuntime, PolicySources, PolicyWatcher, RuntimeSettings, DEFAULT_DEBOUNCE,
};
use switchyard_tests::{artifacts, chat_request, eight_backends, read};

/// How long a change may take to show; the measured figure is printed.
const BOUND: Duration = Duration::from_secs(5);

struct Fixture {
    dir: tempfile::TempDir,
    registry: Arc<PolicyRegistry>,
    _watcher: PolicyWatcher,
}

fn fixture(layout: impl FnOnce(&Path)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    // A backstop of 1 s: a decider thread paused on a busy machine must not
    // count as a failed decision.
    let settings = RuntimeSettings { call_deadline: Duration::from_secs(1), cache_dir: None, ..RuntimeSettings::default() };
    let backends = eight_backends().backends;
    let sources = PolicySources { dir: Some(dir.path().to_path_buf()), builtin: vec![], trust: None };
    let registry = Arc::new(PolicyRegistry::open(PolicyRuntime::new(settings).unwrap(), sources, backends, HashMap::new()).unwrap());
    let watcher = watch(&registry, DEFAULT_DEBOUNCE, Duration::from_secs(60)).unwrap();
    Fixture { dir, registry, _watcher: watcher }
}

/// Which fixture answered: cheapest-healthy labels `reason`, hostile labels `fixture`.
fn author(decision: &Decision) -> &'static str {
    match decision {
        Decision::Route(plan) if plan.labels.iter().any(|(k, _)| k == "reason") => "cheapest",
        Decision::Route(plan) if plan.labels.iter().any(|(k, _)| k == "fixture") => "hostile",
        other => panic!("unexpected decision {other:?}"),
    }
}

struct Deciders {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

#[derive(Default, Debug)]
struct Tally {
    calls: u64,
    failures: Vec<String>,
    first_seen: HashMap<&'static str, Instant>,
}

/// Two threads asking `name` for decisions until stopped.
fn start_deciders(registry: &Arc<PolicyRegistry>, name: &'static str) -> Deciders {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..2)
        .map(|_| {
            let (registry, stop) = (registry.clone(), stop.clone());
            std::thread::spawn(move || {
                let (request, stats) = (chat_request("auto", "hello"), eight_backends().stats);
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    tally.calls += 1;
                    let Some(policy) = registry.get(name) else {
                        tally.failures.push(format!("policy `{name}` not serving"));
                        continue;
                    };
                    match policy.decide(&request, &stats) {
                        Ok(decision) => {
                            tally.first_seen.entry(author(&decision)).or_insert_with(Instant::now);
                        }
                        Err(e) => tally.failures.push(e.to_string()),
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                tally
            })
        })
        .collect();
    Deciders { stop, threads }
}

impl Deciders {
    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for t in self.threads {
            let tally = t.join().unwrap();
            total.calls += tally.calls;
            total.failures.extend(tally.failures);
            for (k, v) in tally.first_seen {
                let e = total.first_seen.entry(k).or_insert(v);
                *e = (*e).min(v);
            }
        }
        total
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

/// Runs deciders on `p`, applies `swap` once they are going, and checks that
/// the hostile fixture takes over with no failed decision. Returns the time
/// from the swap to the first decision by the new version.
fn swap_under_load(fx: &Fixture, swap: impl FnOnce(&Path)) -> Duration {
    let old = cheapest_version();
    let deciders = start_deciders(&fx.registry, "p");
    std::thread::sleep(Duration::from_millis(100));
    let swapped_at = Instant::now();
    swap(fx.dir.path());
    wait_until("new version serving", || fx.registry.get("p").is_some_and(|p| p.version() != old));
    std::thread::sleep(Duration::from_millis(100));
    let tally = deciders.finish();
    assert!(
        tally.failures.is_empty(),
        "{} of {} decisions failed: {:?}",
        tally.failures.len(),
        tally.calls,
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(tally.first_seen.contains_key("cheapest"), "the old version never served");
    let first_new = *tally.first_seen.get("hostile").expect("the new version never served");
    let visible_after = first_new.duration_since(swapped_at);
    eprintln!("new version visible {visible_after:?} after the swap ({} decisions, none failed)", tally.calls);
    visible_after
}

fn cheapest_version() -> String {
    PolicyRuntime::new(RuntimeSettings { cache_dir: None, ..Default::default() })
        .unwrap()
        .inspect("p", &read(artifacts::CHEAPEST_HEALTHY))
        .unwrap()
        .hash
}

fn write_then_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_str().unwrap()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn with_cheapest(dir: &Path) {
    std::fs::write(dir.join("p.wasm"), read(artifacts::CHEAPEST_HEALTHY)).unwrap();
}

#[test]
fn replace_by_rename() {
    let fx = fixture(with_cheapest);
    swap_under_load(&fx, |dir| write_then_rename(&dir.join("p.wasm"), &read(artifacts::HOSTILE)));
}

#[test]
fn replace_by_overwrite_in_place() {
    let fx = fixture(with_cheapest);
    swap_under_load(&fx, |dir| std::fs::write(dir.join("p.wasm"), read(artifacts::HOSTILE)).unwrap());
}

#[test]
fn a_slow_writer_never_gets_half_a_file_served() {
    let fx = fixture(with_cheapest);
    swap_under_load(&fx, |dir| {
        use std::io::Write;
        let bytes = read(artifacts::HOSTILE);
        let mut file = std::fs::File::create(dir.join("p.wasm")).unwrap();
        file.write_all(&bytes[..bytes.len() / 2]).unwrap();
        file.flush().unwrap();
        // Long past the debounce: the registry reads half a component, which
        // must fail while the old version keeps serving.
        std::thread::sleep(DEFAULT_DEBOUNCE * 6);
        file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    });
    let status = fx.registry.statuses().into_iter().find(|s| s.name == "p").unwrap();
    assert!(status.last_error.is_none(), "the complete file should have cleared the error: {status:?}");
}

/// The layout of a Kubernetes ConfigMap volume: `p.wasm -> ..data/p.wasm`,
/// `..data -> ..<timestamp>`, swapped by renaming a new `..data` over it.
fn configmap_layout(dir: &Path) {
    std::fs::create_dir(dir.join("..2026_11_23_00_00_00.1")).unwrap();
    std::fs::write(dir.join("..2026_11_23_00_00_00.1/p.wasm"), read(artifacts::CHEAPEST_HEALTHY)).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_00_00_00.1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/p.wasm", dir.join("p.wasm")).unwrap();
}

#[test]
fn replace_by_configmap_symlink_swap() {
    let fx = fixture(configmap_layout);
    swap_under_load(&fx, |dir| {
        let new = dir.join("..2026_11_23_00_01_00.2");
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("p.wasm"), read(artifacts::HOSTILE)).unwrap();
        std::os::unix::fs::symlink("..2026_11_23_00_01_00.2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join("..2026_11_23_00_00_00.1")).unwrap();
    });
}

#[test]
fn a_broken_replacement_never_serves() {
    let fx = fixture(with_cheapest);
    let good = fx.registry.get("p").unwrap().version().to_owned();
    let deciders = start_deciders(&fx.registry, "p");
    let replacements = [
        ("garbage", b"garbage".to_vec(), PolicyErrorKind::Compile),
        ("other world", read(artifacts::OTHER_WORLD), PolicyErrorKind::WrongWorld),
    ];
    for (what, bytes, kind) in replacements {
        write_then_rename(&fx.dir.path().join("p.wasm"), &bytes);
        wait_until(what, || {
            let status = fx.registry.statuses().into_iter().find(|s| s.name == "p").unwrap();
            status.last_error.as_ref().is_some_and(|e| e.kind() == kind)
        });
        assert_eq!(fx.registry.get("p").unwrap().version(), good, "{what} replaced the good version");
    }
    let tally = deciders.finish();
    assert!(tally.failures.is_empty(), "{:?}", &tally.failures[..tally.failures.len().min(5)]);
    assert_eq!(tally.first_seen.keys().collect::<Vec<_>>(), [&"cheapest"]);
}

#[test]
fn a_refused_config_keeps_the_previous_version() {
    let fx = fixture(with_cheapest);
    let before = fx.registry.get("p").unwrap();
    let report = fx.registry.reconfigure(None, HashMap::from([("p".to_owned(), r#"{"max_targets": 0}"#.to_owned())]));
    assert_eq!(report.failed, ["p"]);
    assert!(Arc::ptr_eq(&before, &fx.registry.get("p").unwrap()));
    let status = fx.registry.statuses().into_iter().find(|s| s.name == "p").unwrap();
    assert_eq!(status.last_error.unwrap().kind(), PolicyErrorKind::ConfigRefused);

    let report = fx.registry.reconfigure(None, HashMap::from([("p".to_owned(), r#"{"max_targets": 1}"#.to_owned())]));
    assert_eq!(report.loaded, ["p"]);
    let after = fx.registry.get("p").unwrap();
    assert_eq!(after.config(), r#"{"max_targets": 1}"#);
    let Decision::Route(plan) = after.decide(&chat_request("auto", "hi"), &eight_backends().stats).unwrap() else { panic!() };
    assert_eq!(plan.targets.len(), 1);

    // The same backends again change nothing; new ones reload every policy,
    // even with the same file and config.
    let same = eight_backends().backends;
    let report = fx.registry.reconfigure(Some(same), HashMap::from([("p".to_owned(), r#"{"max_targets": 1}"#.to_owned())]));
    assert!(report.loaded.is_empty(), "{report:?}");
    let fewer = eight_backends().backends[..2].to_vec();
    let report = fx.registry.reconfigure(Some(fewer), HashMap::from([("p".to_owned(), r#"{"max_targets": 1}"#.to_owned())]));
    assert_eq!(report.loaded, ["p"]);
    assert_eq!(fx.registry.get("p").unwrap().backends().len(), 2);
}

/// New files load. A policy whose file is removed serves on (its routes'
/// requests must not fail for a mistaken delete); a candidate whose file is
/// removed stops.
#[test]
fn new_files_load_and_a_removed_file_stops_only_a_candidate() {
    let fx = fixture(|_| {});
    assert!(fx.registry.names().is_empty());
    std::fs::write(fx.dir.path().join("README.md"), "not a policy").unwrap();
    write_then_rename(&fx.dir.path().join("new.wasm"), &read(artifacts::CHEAPEST_HEALTHY));
    write_then_rename(&fx.dir.path().join("new.canary.wasm"), &read(artifacts::CHEAPEST_HEALTHY));
    wait_until("new policy and its canary loaded", || fx.registry.names() == ["new", "new.canary"]);
    let version = fx.registry.get("new").unwrap().version().to_owned();
    std::fs::remove_file(fx.dir.path().join("new.canary.wasm")).unwrap();
    std::fs::remove_file(fx.dir.path().join("new.wasm")).unwrap();
    wait_until("the removed canary stopped", || fx.registry.get("new.canary").is_none());
    fx.registry.rescan();
    let serving = fx.registry.get("new").expect("the removed policy serves on");
    assert_eq!(serving.version(), version);
    assert!(serving.decide(&chat_request("auto", "hi"), &eight_backends().stats).is_ok());
    assert_eq!(fx.registry.statuses().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["new"]);
    // The file back, the same bytes: the same version, not a reload.
    write_then_rename(&fx.dir.path().join("new.wasm"), &read(artifacts::CHEAPEST_HEALTHY));
    fx.registry.rescan();
    assert_eq!(fx.registry.get("new").unwrap().version(), version);
    assert_eq!(fx.registry.statuses()[0].loads, 1, "{:?}", fx.registry.statuses());
}

#[test]
fn open_reports_broken_files_and_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.wasm"), read(artifacts::CHEAPEST_HEALTHY)).unwrap();
    std::fs::write(dir.path().join("bad.wasm"), b"nope").unwrap();
    let runtime = PolicyRuntime::new(RuntimeSettings { cache_dir: None, ..Default::default() }).unwrap();
    let sources = |dir: PathBuf| PolicySources { dir: Some(dir), builtin: vec![], trust: None };
    let registry = PolicyRegistry::open(runtime.clone(), sources(dir.path().to_path_buf()), Vec::new(), HashMap::new()).unwrap();
    assert_eq!(registry.names(), ["good"]);
    let statuses = registry.statuses();
    let bad = statuses.iter().find(|s| s.name == "bad").unwrap();
    assert_eq!(bad.last_error.as_ref().unwrap().kind(), PolicyErrorKind::Compile);
    assert_eq!(bad.file, dir.path().join("bad.wasm"));
    let missing = PolicyRegistry::open(runtime, sources(dir.path().join("missing")), Vec::new(), HashMap::new()).err().unwrap();
    assert!(missing.message().contains("does not exist"), "{missing}");
}
