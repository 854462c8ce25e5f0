//! The decision log: one JSON line per request with what the policy saw
//! (the request's metadata, the backends' stats, the seed), what it decided,
//! and what came of it. A record holds what is needed to replay the
//! decision with the same policy version and configuration.
//!
//! Writing never blocks a request: records are serialised on the caller's
//! thread and go through a queue bounded in records and in bytes to a writer
//! thread; when the queue is full, records are dropped and counted. The
//! disk is bounded too: the file is rotated at a size or an age (`FILE.1`
//! the newest old one, gzipped to `FILE.1.gz` when asked, on a thread of its
//! own) and only so many old files are kept; an external rotation
//! (logrotate) asks for a reopen with SIGHUP; ordinary records can be
//! sampled, while notable ones (errors, fallbacks, rejections, policy
//! failures, broken or rescued streams) are always written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::contract::{json, Request};

/// Records waiting to be written, at most.
const QUEUE: usize = 10_000;
/// Bytes of records waiting to be written, at most.
const QUEUE_BYTES: u64 = 64 << 20;

/// How the log uses the disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// The file is rotated before it grows past this many bytes.
    pub max_file_bytes: u64,
    /// The file is rotated once it is this old (and has a record).
    pub max_file_age: Duration,
    /// Rotated files kept (`FILE.1` .. `FILE.N`); older ones are deleted.
    pub keep_files: u32,
    /// Share of ordinary records written, 0 to 1; notable ones always are.
    pub sample_rate: f64,
    /// Rotated files are gzipped (`FILE.1.gz`).
    pub compress: bool,
}

/// The log's writer end.
pub struct DecisionLog {
    /// `None` once dropped, which tells the writer to finish.
    tx: Option<SyncSender<Entry>>,
    writer: Option<std::thread::JoinHandle<()>>,
    include_prompts: bool,
    sample_rate: f64,
    dropped: AtomicU64,
    /// Bytes of records queued and not yet written.
    queued: Arc<AtomicU64>,
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
    pub fn open(path: &Path, include_prompts: bool, retention: Retention) -> std::io::Result<Self> {
        let mut file = LogFile::open(path, retention)?;
        let (tx, rx) = sync_channel::<Entry>(QUEUE);
        let queued = Arc::new(AtomicU64::new(0));
        let written = queued.clone();
        let writer = std::thread::Builder::new().name("decision-log".into()).spawn(move || {
            loop {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(Entry::Record(line)) => {
                        written.fetch_sub(line.len() as u64, Ordering::Relaxed);
                        if let Err(e) = file.write_line(&line) {
                            tracing::error!(path = %file.path.display(), "decision log write failed: {e}");
                        }
                    }
                    Ok(Entry::Reopen) => match file.reopen() {
                        Ok(()) => tracing::info!(path = %file.path.display(), "decision log reopened"),
                        Err(e) => tracing::error!(path = %file.path.display(), "decision log reopen failed: {e}"),
                    },
                    // Quiet: make what was written visible.
                    Err(RecvTimeoutError::Timeout) => {
                        let _ = file.out.flush();
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = file.out.flush();
                        // A rotated file being gzipped is finished, not left half done.
                        if let Some(gzip) = file.compressing.take() {
                            let _ = gzip.join();
                        }
                        return;
                    }
                }
            }
        })?;
        let sample_rate = retention.sample_rate;
        Ok(Self { tx: Some(tx), writer: Some(writer), include_prompts, sample_rate, dropped: AtomicU64::new(0), queued })
    }

    /// Queues `record` when it is `notable` or sampled in; never blocks.
    pub fn write_sampled(&self, record: Value, notable: bool) {
        if notable || self.sample_rate >= 1.0 || rand::random::<f64>() < self.sample_rate {
            self.write(record);
        }
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Closes the file and opens `path` again, after an external rotation
    /// moved it away (SIGHUP); records queued before are written first.
    pub fn reopen(&self) {
        if self.tx.as_ref().is_none_or(|tx| tx.try_send(Entry::Reopen).is_err()) {
            tracing::warn!("decision log reopen not queued: the queue is full; send SIGHUP again");
        }
    }

    /// Queues `record`; never blocks. Dropped (and counted) when the queue
    /// holds `QUEUE` records or `QUEUE_BYTES` bytes.
    pub fn write(&self, record: Value) {
        let mut line = serde_json::to_string(&record).unwrap_or_default();
        line.push('\n');
        let bytes = line.len() as u64;
        let admitted = self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes <= QUEUE_BYTES;
        if !admitted || self.tx.as_ref().is_none_or(|tx| tx.try_send(Entry::Record(line)).is_err()) {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The policy's view of a request, as JSON; message text only when the
    /// log is configured to include prompts.
    pub fn request_json(&self, r: &Request) -> Value {
        json::request_json(r, self.include_prompts)
    }
}

/// What the writer thread is asked to do.
enum Entry {
    /// A serialised record, with its newline.
    Record(String),
    Reopen,
}

/// The file being written, its size and age, and its rotation.
struct LogFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    /// Bytes in the current file, written or buffered.
    bytes: u64,
    opened: std::time::Instant,
    retention: Retention,
    /// The gzip of the last rotated file, while it runs.
    compressing: Option<std::thread::JoinHandle<()>>,
}

impl LogFile {
    fn open(path: &Path, retention: Retention) -> std::io::Result<Self> {
        let (out, bytes) = Self::append_to(path)?;
        Ok(Self { path: path.to_path_buf(), out, bytes, opened: std::time::Instant::now(), retention, compressing: None })
    }

    fn append_to(path: &Path) -> std::io::Result<(std::io::BufWriter<std::fs::File>, u64)> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let bytes = file.metadata()?.len();
        Ok((std::io::BufWriter::new(file), bytes))
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        (self.out, self.bytes) = Self::append_to(&self.path)?;
        self.opened = std::time::Instant::now();
        Ok(())
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let too_big = self.bytes + line.len() as u64 > self.retention.max_file_bytes;
        if self.bytes > 0 && (too_big || self.opened.elapsed() >= self.retention.max_file_age) {
            self.rotate()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// `FILE` becomes `FILE.1`, `FILE.1` becomes `FILE.2`, ... (each with
    /// `.gz` when compressed); past `keep_files` they are deleted; a new
    /// `FILE` is started. `FILE.1` is then gzipped on a thread of its own;
    /// the next rotation waits for it, so no file moves while it is read.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if let Some(previous) = self.compressing.take() {
            let _ = previous.join();
        }
        let numbered = |n: u32, gz: bool| PathBuf::from(format!("{}.{n}{}", self.path.display(), if gz { ".gz" } else { "" }));
        let keep = self.retention.keep_files;
        for gz in [false, true] {
            let _ = std::fs::remove_file(numbered(keep.max(1), gz));
            for n in (1..keep).rev() {
                let _ = std::fs::rename(numbered(n, gz), numbered(n + 1, gz));
            }
        }
        if keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            std::fs::rename(&self.path, numbered(1, false))?;
            if self.retention.compress {
                let (plain, gz) = (numbered(1, false), numbered(1, true));
                let spawned = std::thread::Builder::new().name("decision-log-gzip".into()).spawn(move || {
                    if let Err(e) = gzip(&plain, &gz) {
                        tracing::error!(path = %plain.display(), "decision log compression failed: {e}");
                    }
                });
                match spawned {
                    Ok(handle) => self.compressing = Some(handle),
                    Err(e) => tracing::error!("decision log compression not started: {e}"),
                }
            }
        }
        self.reopen()
    }
}

/// Gzips `plain` into `gz` (written aside, then renamed) and removes `plain`.
fn gzip(plain: &Path, gz: &Path) -> std::io::Result<()> {
    let partial = gz.with_extension("gz.partial");
    let mut input = std::fs::File::open(plain)?;
    let mut encoder = flate2::write::GzEncoder::new(std::fs::File::create(&partial)?, flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    std::fs::rename(&partial, gz)?;
    std::fs::remove_file(plain)
}

/// Token usage as `{"input", "output"}`, or `null` when the upstream did
/// not report it.
pub fn tokens_json(usage: Option<(u64, u64)>) -> Value {
    usage.map_or(Value::Null, |(input, output)| json!({"input": input, "output": output}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_log_flushes_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = DecisionLog::open(&path, false, UNBOUNDED).unwrap();
        for i in 0..1000 {
            log.write(json!({"n": i}));
        }
        drop(log);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 1000);
    }

    const UNBOUNDED: Retention = Retention {
        max_file_bytes: u64::MAX,
        max_file_age: Duration::from_secs(1 << 40),
        keep_files: 1,
        sample_rate: 1.0,
        compress: false,
    };

    #[test]
    fn rotated_files_are_gzipped_when_asked_and_still_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = DecisionLog::open(&path, false, Retention { max_file_bytes: 1000, keep_files: 2, compress: true, ..UNBOUNDED }).unwrap();
        for i in 0..100 {
            log.write(json!({"n": i, "pad": "x".repeat(100 - 20 - i.to_string().len())}));
        }
        drop(log);
        // The gzip threads run on their own: wait for them.
        let names = || {
            let mut files: Vec<String> =
                std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            files.sort();
            files
        };
        let started = std::time::Instant::now();
        while names() != ["d.jsonl", "d.jsonl.1.gz", "d.jsonl.2.gz"] && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(names(), ["d.jsonl", "d.jsonl.1.gz", "d.jsonl.2.gz"]);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(dir.path().join("d.jsonl.1.gz")).unwrap()),
            &mut text,
        )
        .unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["n"], 89, "FILE.1.gz holds the records before FILE's");
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = DecisionLog::open(&dir.path().join("d.jsonl"), false, UNBOUNDED).unwrap();
        // Records of 8 MiB: far fewer than QUEUE, more bytes than QUEUE_BYTES
        // if the writer cannot keep up. Whatever it keeps up with, the bytes
        // queued never pass the bound.
        let big = "x".repeat(8 << 20);
        for _ in 0..40 {
            log.write(json!({"pad": big}));
            assert!(log.queued.load(Ordering::Relaxed) <= QUEUE_BYTES);
        }
        let dropped = log.dropped();
        drop(log);
        let written = std::fs::read_to_string(dir.path().join("d.jsonl")).unwrap().lines().count() as u64;
        assert_eq!(written + dropped, 40, "every record written or counted as dropped");
    }

    #[test]
    fn files_rotate_at_their_size_and_only_so_many_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let retention = Retention { max_file_bytes: 1000, keep_files: 2, ..UNBOUNDED };
        let log = DecisionLog::open(&path, false, retention).unwrap();
        // 100 records of 100 bytes each (with the newline): 10 files' worth.
        for i in 0..100 {
            log.write(json!({"n": i, "pad": "x".repeat(100 - 20 - i.to_string().len())}));
        }
        drop(log);
        let mut files: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        assert_eq!(files, ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]);
        for file in &files {
            let len = std::fs::metadata(dir.path().join(file)).unwrap().len();
            assert!(len <= 1000, "{file}: {len} bytes");
        }
        // The newest records are in FILE, the ones before in FILE.1.
        let last: Value = serde_json::from_str(std::fs::read_to_string(&path).unwrap().lines().last().unwrap()).unwrap();
        assert_eq!(last["n"], 99);
        let older: Value =
            serde_json::from_str(std::fs::read_to_string(dir.path().join("d.jsonl.1")).unwrap().lines().last().unwrap()).unwrap();
        assert_eq!(older["n"], 89);
    }

    #[test]
    fn a_file_older_than_its_age_is_rotated_at_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = DecisionLog::open(&path, false, Retention { max_file_age: Duration::from_secs(2), keep_files: 3, ..UNBOUNDED }).unwrap();
        log.write(json!({"n": 1}));
        log.write(json!({"n": 2}));
        // (2 s: the writer thread may take a while to start on a busy machine.)
        std::thread::sleep(Duration::from_millis(2500));
        log.write(json!({"n": 3}));
        drop(log);
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((lines(&dir.path().join("d.jsonl.1")), lines(&path)), (2, 1));
    }

    #[test]
    fn ordinary_records_are_sampled_and_notable_ones_always_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = DecisionLog::open(&path, false, Retention { sample_rate: 0.1, ..UNBOUNDED }).unwrap();
        for i in 0..2000 {
            log.write_sampled(json!({"n": i}), i % 100 == 0);
        }
        drop(log);
        let records: Vec<Value> = std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let notable = records.iter().filter(|r| r["n"].as_u64().unwrap() % 100 == 0).count();
        assert_eq!(notable, 20, "every notable record");
        // About 10 % of the 1980 ordinary ones (binomial: σ is 13.3, so 198 ± 68 is past 5 σ).
        assert!((130..=266).contains(&(records.len() - notable)), "{} ordinary records", records.len() - notable);
    }
}
