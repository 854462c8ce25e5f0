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

use crate::contract::{json, BackendStats, Request};

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
        json::request_json(r, self.include_prompts)
    }
}

/// Token usage as `{"input", "output"}`, or `null` when the upstream did
/// not report it.
pub fn tokens_json(usage: Option<(u64, u64)>) -> Value {
    usage.map_or(Value::Null, |(input, output)| json!({"input": input, "output": output}))
}

/// Backend stats as JSON, in the form `switchyard policy eval` reads.
pub fn stats_json(names: &[String], stats: &[BackendStats]) -> Value {
    json::stats_json(names, stats)
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
