//! The decision log: one JSON line per request with what the policy saw
//! (the request's metadata, the backends' stats, the seed), what it decided,
//! and what came of it. A record holds what is needed to replay the
//! decision with the same policy version and configuration.
//!
//! Writing never blocks a request: records go through a bounded queue to a
//! writer thread; when the queue is full, records are dropped and counted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::time::Duration;

use serde_json::{json, Value};

use crate::policy::contract::{circuit_name, ApiSurface, BackendStats, Request, Role};

/// Records waiting to be written, at most.
const QUEUE: usize = 10_000;

/// The log's writer end.
pub struct DecisionLog {
    /// `None` once dropped, which tells the writer to finish.
    tx: Option<SyncSender<Value>>,
    writer: Option<std::thread::JoinHandle<()>>,
    include_prompts: bool,
    dropped: AtomicU64,
}

impl Drop for DecisionLog {
    /// Closes the queue and waits for the writer to write and flush what it
    /// holds, so no accepted record is lost at shutdown.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl DecisionLog {
    /// Opens (appends to) `path` and starts the writer thread.
    pub fn open(path: &Path, include_prompts: bool) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = sync_channel::<Value>(QUEUE);
        let path: PathBuf = path.to_path_buf();
        let writer = std::thread::Builder::new().name("decision-log".into()).spawn(move || {
            let mut out = std::io::BufWriter::new(file);
            loop {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(record) => {
                        let line = serde_json::to_string(&record).unwrap_or_default();
                        if let Err(e) = writeln!(out, "{line}") {
                            tracing::error!(path = %path.display(), "decision log write failed: {e}");
                        }
                    }
                    // Quiet: make what was written visible.
                    Err(RecvTimeoutError::Timeout) => {
                        let _ = out.flush();
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = out.flush();
                        return;
                    }
                }
            }
        })?;
        Ok(Self { tx: Some(tx), writer: Some(writer), include_prompts, dropped: AtomicU64::new(0) })
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues `record`; never blocks.
    pub fn write(&self, record: Value) {
        if self.tx.as_ref().is_none_or(|tx| tx.try_send(record).is_err()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The policy's view of a request, as JSON; message text only when the
    /// log is configured to include prompts.
    pub fn request_json(&self, r: &Request) -> Value {
        let messages: Vec<Value> = r
            .messages
            .iter()
            .map(|m| {
                let mut v = json!({
                    "role": role(m.role), "text_bytes": m.text_bytes, "has_image": m.has_image,
                    "has_audio": m.has_audio, "has_file": m.has_file, "has_tool_calls": m.has_tool_calls,
                });
                if self.include_prompts {
                    v["text"] = json!(m.text);
                }
                v
            })
            .collect();
        let tags: serde_json::Map<String, Value> = r.tags.iter().map(|t| (t.key.clone(), json!(t.value))).collect();
        json!({
            "id": r.id, "model": r.model, "surface": surface(r.surface), "stream": r.stream, "messages": messages,
            "input_tokens": r.input_tokens, "max_output_tokens": r.max_output_tokens, "tools": r.tools, "json_mode": r.json_mode,
            "key_name": r.caller.key_name, "user": r.caller.user, "tags": tags, "seed": r.seed,
        })
    }
}

/// Token usage as `{"input", "output"}`, or `null` when the upstream did
/// not report it.
pub fn tokens_json(usage: Option<(u64, u64)>) -> Value {
    usage.map_or(Value::Null, |(input, output)| json!({"input": input, "output": output}))
}

/// Backend stats as JSON, in the form `switchyard policy eval` reads.
pub fn stats_json(names: &[String], stats: &[BackendStats]) -> Value {
    let list: Vec<Value> = names
        .iter()
        .zip(stats)
        .map(|(name, s)| {
            json!({"name": name, "stats": {"circuit": circuit_name(s.circuit), "in_flight": s.in_flight, "latency_p50_ms": s.latency_p50_ms,
                "latency_p95_ms": s.latency_p95_ms, "ttft_ms": s.ttft_ms, "error_rate": s.error_rate, "samples": s.samples}})
        })
        .collect();
    Value::Array(list)
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn surface(s: ApiSurface) -> &'static str {
    match s {
        ApiSurface::Chat => "chat",
        ApiSurface::Completion => "completion",
        ApiSurface::Embeddings => "embeddings",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_log_flushes_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = DecisionLog::open(&path, false).unwrap();
        for i in 0..1000 {
            log.write(json!({"n": i}));
        }
        drop(log);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 1000);
    }
}
