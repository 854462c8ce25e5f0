//! Running the real `switchyard` binary: the router and the mock upstream,
//! each in its own process on a free port.

#![allow(dead_code)]

pub mod origin;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A running `switchyard` process, killed when dropped.
pub struct Proc {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin listener's URL, when the router has one.
    pub admin_url: Option<String>,
    log: PathBuf,
}

impl Proc {
    /// Starts `switchyard ARGS` and waits for the address it prints.
    pub fn start(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Proc {
        Self::spawn(Command::new(BIN), args, dir, env)
    }

    /// Starts `switchyard ARGS` under a limit on open files (`ulimit`
    /// arguments: `-n 300` sets both limits, `-Sn 300` only the soft one).
    pub fn start_with_open_files(ulimit: &str, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Proc {
        let mut shell = Command::new("sh");
        shell.args(["-c", &format!("ulimit {ulimit} && exec \"$0\" \"$@\""), BIN]);
        Self::spawn(shell, args, dir, env)
    }

    fn spawn(mut command: Command, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Proc {
        let log = dir.join(format!("{}-{}.log", args[0], rand_suffix()));
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .env("XDG_CACHE_HOME", std::env::temp_dir().join("switchyard-e2e-cache"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // `admin listening on URL` may come first; the main line is last.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut admin_url = None;
        let url = loop {
            let line = rx
                // Generous: a router compiling a Python or JavaScript policy on a busy 2-core machine.
                .recv_timeout(Duration::from_secs(180))
                .unwrap_or_else(|_| panic!("{args:?} did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
            let url = line.split_whitespace().last().unwrap().to_owned();
            if line.starts_with("admin listening on") {
                admin_url = Some(url);
            } else {
                break url;
            }
        };
        Proc { child, url, admin_url, log }
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the process has logged `needle` `times`
    /// times: a log line may land a moment after the effect it reports.
    pub async fn until_logged(&self, needle: &str, times: usize) {
        let started = std::time::Instant::now();
        while self.logs().matches(needle).count() < times {
            assert!(started.elapsed() < Duration::from_secs(10), "`{needle}` not logged {times} times:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }

    /// Sends SIGHUP (the decision log reopens its file).
    pub fn hangup(&self) {
        self.signal("-HUP");
    }

    /// Sends `signal` (`-TERM`, `-HUP`) without waiting for the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1000 + u64::from(std::process::id())
}

/// A mock upstream.
pub fn mock_upstream(dir: &Path) -> Proc {
    Proc::start(&["mock-upstream", "--listen", "127.0.0.1:0"], dir, &[])
}

/// A router on `config` (written to `dir/switchyard.toml`).
pub fn router(dir: &Path, config: &str, env: &[(&str, &str)]) -> Proc {
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    Proc::start(&["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"], dir, env)
}

/// An HTTP client that does not retry.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A chat request body.
pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Tell me about routers."}]})
}

/// A response, read whole.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        self.body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
    }
}

/// POSTs `body` to `url` + `path`.
pub async fn post(url: &str, path: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Answer {
    let mut request = client().post(format!("{url}{path}")).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    Answer { status: response.status().as_u16(), headers: response.headers().clone(), body: response.text().await.unwrap_or_default() }
}

/// The JSON of an admin API `path`, with the admin token the tests configure.
pub async fn admin_json(admin: &str, path: &str, token: &str) -> serde_json::Value {
    let response = client().get(format!("{admin}{path}")).header("authorization", format!("Bearer {token}")).send().await.unwrap();
    response.json().await.unwrap()
}

/// What the mock upstream received.
pub async fn received(mock: &Proc) -> Vec<serde_json::Value> {
    client().get(format!("{}/mock/requests", mock.url)).send().await.unwrap().json().await.unwrap()
}

/// Replaces the file at `path` with `text` at once (written beside it, then
/// renamed), as an operator's deploy does: the router's watcher never reads
/// it half written.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Forgets what the mock upstream received.
pub async fn clear(mock: &Proc) {
    client().delete(format!("{}/mock/requests", mock.url)).send().await.unwrap();
}

/// The decision log's records at `path`, once there are at least `n` (or
/// what there is after 10 s: the writer thread flushes every 200 ms).
/// Only whole lines count: the last may be half written.
pub async fn decision_records(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        let records: Vec<serde_json::Value> = whole.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if records.len() >= n || started.elapsed() > Duration::from_secs(10) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
