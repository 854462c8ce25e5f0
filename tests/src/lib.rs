//! Shared pieces of the end-to-end tests and benchmarks: paths of the
//! compiled guest components, and request and backend fixtures.

use std::path::Path;

use switchyard::contract::*;

pub mod quality;

/// Paths of the guest components built by `build.rs`.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// Reads a built component.
pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A chat request for `model` with one user message.
pub fn chat_request(model: &str, text: &str) -> Request {
    Request {
        id: "test".into(),
        model: model.into(),
        surface: ApiSurface::Chat,
        stream: false,
        messages: vec![Message {
            role: Role::User,
            text: text.into(),
            text_bytes: text.len() as u32,
            has_image: false,
            has_audio: false,
            has_file: false,
            has_tool_calls: false,
        }],
        total_text_bytes: text.len() as u64,
        input_tokens: (text.len() / 4) as u32,
        max_output_tokens: None,
        tools: vec![],
        json_mode: false,
        caller: Caller { key_name: None, user: None },
        tags: vec![],
        seed: 42,
    }
}

/// Backends and their live stats, index-aligned as the contract wants.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// What `init` gets.
    pub backends: Vec<Backend>,
    /// What `route` gets.
    pub stats: Vec<BackendStats>,
}

impl Fleet {
    /// Adds a healthy backend with all capabilities, priced `input_price` per
    /// million input tokens and four times that for output; `edit` adjusts it.
    pub fn with(mut self, name: &str, input_price: f64, edit: impl FnOnce(&mut Backend, &mut BackendStats)) -> Self {
        let (mut backend, mut stats) = backend(name, input_price);
        edit(&mut backend, &mut stats);
        self.backends.push(backend);
        self.stats.push(stats);
        self
    }
}

/// A healthy backend with all capabilities and some latency history.
pub fn backend(name: &str, input_price: f64) -> (Backend, BackendStats) {
    let backend = Backend {
        name: name.into(),
        provider: "mock".into(),
        model: format!("{name}-model"),
        tags: vec![],
        input_price,
        output_price: input_price * 4.0,
        context_window: 128_000,
        capabilities: Capabilities { vision: true, tools: true, json_mode: true, stream: true },
    };
    let stats = BackendStats {
        circuit: CircuitState::Closed,
        in_flight: 0,
        latency_p50_ms: 100.0,
        latency_p95_ms: 300.0,
        ttft_ms: 50.0,
        error_rate: 0.0,
        samples: 100,
    };
    (backend, stats)
}

/// Eight backends with distinct prices, as in the benchmark.
pub fn eight_backends() -> Fleet {
    [
        ("gpt-4o", 2.5),
        ("gpt-4o-mini", 0.15),
        ("claude-sonnet", 3.0),
        ("claude-haiku", 0.8),
        ("llama-70b", 0.6),
        ("llama-8b", 0.05),
        ("mistral-large", 2.0),
        ("qwen-72b", 0.4),
    ]
    .iter()
    .fold(Fleet::default(), |fleet, (n, p)| fleet.with(n, *p, |_, _| {}))
}

/// A language with its own policy toolchain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// componentize-py, sources in `policies/python/<name>/app.py`.
    Python,
    /// componentize-js, sources in `policies/js/<name>/app.js`.
    JavaScript,
}

/// Builds the policy `name` written in `lang` into
/// `target/guests/<lang>/<name>.wasm` (again only when its source is newer).
/// A missing toolchain fails the test with the command that installs it: no
/// test passes for something it did not check.
pub fn polyglot_policy(lang: Lang, name: &str) -> std::path::PathBuf {
    let root = repo_root();
    let dir = lang.dir();
    build_polyglot(lang, &root.join("policies").join(dir).join(name), &root.join("target/guests").join(dir).join(format!("{name}.wasm")))
}

/// Builds the test fixture `name` written in `lang` (sources in
/// `tests/guests/<lang>/<name>/`), as [`polyglot_policy`] does.
pub fn polyglot_fixture(lang: Lang, name: &str) -> std::path::PathBuf {
    let root = repo_root();
    let dir = lang.dir();
    build_polyglot(
        lang,
        &root.join("tests/guests").join(dir).join(name),
        &root.join("target/guests").join(dir).join(format!("fixture-{name}.wasm")),
    )
}

impl Lang {
    fn dir(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::JavaScript => "js",
        }
    }
}

fn build_polyglot(lang: Lang, source: &Path, out: &Path) -> std::path::PathBuf {
    // One build at a time in a process: two tests asking for the same
    // component must not both write it, nor read it half written.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = repo_root();
    let newest_source = std::fs::read_dir(source).unwrap().filter_map(|e| e.ok()?.metadata().ok()?.modified().ok()).max();
    let built = std::fs::metadata(out).and_then(|m| m.modified()).ok();
    if built.is_some() && built >= newest_source {
        return out.to_owned();
    }
    require_toolchain(lang);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    // Built beside `out`, then renamed: an interrupted build leaves no
    // truncated file that would count as built.
    let partial = out.with_extension(format!("partial-{}.wasm", std::process::id()));
    let (wit, src, dst) = (root.join("wit"), source.to_str().unwrap(), partial.to_str().unwrap());
    let mut build = match lang {
        Lang::Python => {
            command("componentize-py", &["-d", wit.to_str().unwrap(), "-w", "policy", "componentize", "app", "-p", src, "-o", dst])
        }
        Lang::JavaScript => command("node", &[root.join("policies/js/build.mjs").to_str().unwrap(), src, dst]),
    };
    let status = build.status().unwrap();
    assert!(status.success(), "building the {lang:?} policy {} failed", source.display());
    std::fs::rename(&partial, out).unwrap();
    out.to_owned()
}

/// Whether the toolchain of `lang` is installed (for benchmarks, which may
/// leave a language out; tests use [`require_toolchain`]).
pub fn toolchain_available(lang: Lang) -> bool {
    match lang {
        Lang::Python => command("componentize-py", &["--version"]).output().is_ok_and(|o| o.status.success()),
        Lang::JavaScript => js_modules().join("@bytecodealliance/componentize-js/package.json").exists(),
    }
}

/// Fails the test, with the command that installs it, when the toolchain of
/// `lang` is missing. `scripts/test` installs every toolchain.
pub fn require_toolchain(lang: Lang) {
    let install = match lang {
        Lang::Python => "python3 -m pip install componentize-py==0.25.1",
        Lang::JavaScript => "cd policies/js && npm install",
    };
    assert!(toolchain_available(lang), "the {lang:?} policy toolchain is missing: run `scripts/test`, which installs it, or `{install}`");
}

/// `policies/js/node_modules`, where `.ci/run` installs componentize-js.
pub fn js_modules() -> std::path::PathBuf {
    repo_root().join("policies/js/node_modules")
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn command(program: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.args(args);
    c
}

/// A compiled-artifact cache shared by the tests, so that large (Python,
/// JavaScript) components are compiled once.
pub fn test_cache_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/policy-cache")
}
