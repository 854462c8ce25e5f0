//! Where a policy's log lines go: the `log` host import and the guest's
//! stdout and stderr, all rate-limited per policy version.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::bindings::LogLevel;
use crate::text::cut_at_char_boundary;

/// The log sink of one policy version, shared by all its instances.
pub(crate) struct GuestLog {
    policy: String,
    version: String,
    lines_per_second: u32,
    line_max_bytes: usize,
    epoch: Instant,
    /// The second (since `epoch`) that `lines_this_second` counts.
    second: AtomicU64,
    lines_this_second: AtomicU32,
    dropped: AtomicU64,
}

impl GuestLog {
    pub(crate) fn new(policy: &str, version: &str, lines_per_second: u32, line_max_bytes: usize) -> Self {
        Self {
            policy: policy.to_owned(),
            version: version.to_owned(),
            lines_per_second,
            line_max_bytes,
            epoch: Instant::now(),
            second: AtomicU64::new(0),
            lines_this_second: AtomicU32::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Lines dropped by the rate limit so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes one line from this second's budget; racy at second boundaries,
    /// which only lets a few lines more or fewer through.
    fn admit(&self) -> bool {
        let now = self.epoch.elapsed().as_secs();
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.lines_this_second.store(0, Ordering::Relaxed);
        }
        if self.lines_this_second.fetch_add(1, Ordering::Relaxed) < self.lines_per_second {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    pub(crate) fn emit(&self, level: LogLevel, line: &str) {
        if !self.admit() {
            return;
        }
        let line = cut_at_char_boundary(line, self.line_max_bytes);
        let (policy, version) = (self.policy.as_str(), self.version.as_str());
        match level {
            // Release builds compile `trace` records out (tracing's `release_max_level_debug`).
            LogLevel::Trace => tracing::debug!(target: "policy", policy, version, guest_level = "trace", "{line}"),
            LogLevel::Debug => tracing::debug!(target: "policy", policy, version, "{line}"),
            LogLevel::Info => tracing::info!(target: "policy", policy, version, "{line}"),
            LogLevel::Warn => tracing::warn!(target: "policy", policy, version, "{line}"),
            LogLevel::Error => tracing::error!(target: "policy", policy, version, "{line}"),
        }
    }
}

/// The last lines an instance wrote to stderr during its current call, so
/// that a trap's error can say what the guest said before it (a Python
/// traceback's last line, a Rust panic message). Kept whatever the rate
/// limit dropped.
#[derive(Default)]
pub(crate) struct StderrTail {
    lines: Mutex<VecDeque<String>>,
    any: AtomicBool,
}

/// Lines a [`StderrTail`] keeps: enough for a short Python traceback and
/// the runtime's panic lines after it.
const TAIL_LINES: usize = 8;

impl StderrTail {
    fn push(&self, line: &str) {
        // Every Rust-based guest runtime prints this after a panic: noise here.
        if line.trim().is_empty() || line.starts_with("note: run with `RUST_BACKTRACE") {
            return;
        }
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
        self.any.store(true, Ordering::Relaxed);
    }

    /// Forgets the lines of the previous call (a flag check when there are none).
    pub(crate) fn clear(&self) {
        if self.any.load(Ordering::Relaxed) {
            self.any.store(false, Ordering::Relaxed);
            self.lines.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The kept lines, joined with ` | `; empty when there are none.
    pub(crate) fn joined(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(|l| cut_at_char_boundary(l.trim(), 300)).collect::<Vec<_>>().join(" | ")
    }
}

/// Guest stdout or stderr: split into lines and sent to the [`GuestLog`].
/// Writes always succeed (a guest's `println!` must not fail because the host
/// is throttling it); a line longer than the cap is cut.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    log: Arc<GuestLog>,
    level: LogLevel,
    tail: Option<Arc<StderrTail>>,
}

impl GuestOutput {
    pub(crate) fn new(log: Arc<GuestLog>, level: LogLevel) -> Self {
        Self { log, level, tail: None }
    }

    /// Also keeps the last lines in `tail`.
    pub(crate) fn with_tail(mut self, tail: Arc<StderrTail>) -> Self {
        self.tail = Some(tail);
        self
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(GuestOutputStream { out: self.clone(), pending: Vec::new() })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestOutputStream { out: self.clone(), pending: Vec::new() })
    }
}

struct GuestOutputStream {
    out: GuestOutput,
    /// The current, unfinished line.
    pending: Vec<u8>,
}

impl GuestOutputStream {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.append(&bytes[..newline]);
            self.emit_line();
            bytes = &bytes[newline + 1..];
        }
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.out.log.line_max_bytes.saturating_sub(self.pending.len());
        self.pending.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit_line(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches('\r');
        if let Some(tail) = &self.out.tail {
            tail.push(line);
        }
        self.out.log.emit(self.out.level, line);
        self.pending.clear();
    }
}

impl Drop for GuestOutputStream {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit_line();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutputStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutputStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutputStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_drops_lines_over_budget() {
        let log = GuestLog::new("p", "v", 3, 100);
        for _ in 0..10 {
            log.emit(LogLevel::Info, "hello");
        }
        assert_eq!(log.dropped(), 7);
    }
}
