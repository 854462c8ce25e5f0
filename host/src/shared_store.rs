//! The shared store: a Redis (or Valkey) server that the nodes of a fleet
//! share for limits, budgets and cached answers.
//!
//! A request waits for at most one round trip: its commands go in one
//! pipeline. Writes nobody waits for (settlements, cached answers) are
//! deferred: they ride in front of the next request's commands (no round
//! trip of their own, and under load they batch), or a task of their own
//! sends them 2 ms after they came when no request took them.
//!
//! Calls are bounded by `shared.timeout_ms`. After a failure the store is
//! left alone for a second (every request meanwhile gets
//! `on_shared_error`), then tried again: a store that comes back is used
//! again without a restart.
//!
//! Connections: a deadpool of sockets, each owned by one call while it
//! talks (write the pipeline, read its replies, on the caller's task);
//! redis-rs packs the commands and parses the replies. redis-rs's own
//! multiplexed connections pass every call through a driver task: on two
//! cores at one request at a time that was 106 µs for a PING against 31 µs
//! on an owned socket. A connection interrupted mid-call (a timeout) is
//! never reused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use combine::parser::combinator::AnySendSyncPartialState;
use combine::stream::{Decoder, PointerOffset};
use deadpool::managed::{Manager, Metrics as PoolMetrics, Pool, PoolError, RecycleError, RecycleResult};
use redis::{Cmd, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{OnSharedError, SharedConfig};
use crate::metrics::Metrics;

/// How long the store is left alone after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

/// Deferred writes kept while the store cannot be reached; past this the
/// oldest are dropped (a settlement then expires with its lease).
const MAX_DEFERRED: usize = 10_000;

/// Why a shared-store call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// The store failed recently; it is not asked again before the backoff ends.
    #[error("the shared store failed less than a second ago")]
    Backoff,
    /// The call took longer than `shared.timeout_ms`.
    #[error("the shared store did not answer within {0} ms")]
    Timeout(u64),
    /// The store answered with an error, or the connection failed.
    #[error("the shared store failed: {0}")]
    Failed(String),
}

impl SharedError {
    /// What a client may read: no address, no store or pool wording (the
    /// router's log has the whole error).
    pub fn client_text(&self) -> String {
        match self {
            Self::Failed(_) => "the shared store failed (the router's log says why)".into(),
            other => other.to_string(),
        }
    }
}

/// A connection to the shared store.
pub struct SharedStore {
    pool: Pool<Connector>,
    /// `host:port`, for logs (never for clients).
    address: String,
    config: SharedConfig,
    /// The sources of the server-side scripts callers run (by hash),
    /// loaded again when the store has forgotten them (a restart).
    scripts: Vec<&'static str>,
    /// Writes waiting for the next round trip.
    deferred: Mutex<Vec<Deferred>>,
    /// Wakes the task that sends deferred writes.
    flusher: OnceLock<Arc<tokio::sync::Notify>>,
    /// The flusher has taken deferred writes and not yet sent them; set and
    /// read under `deferred`'s lock. A call waits for them (`flushed`)
    /// before it takes the rest, so that a write deferred before it reaches
    /// the store first: a request's settlement before the same client's
    /// next admission.
    flushing: AtomicBool,
    /// Told when the flusher's writes have gone (or failed and are queued again).
    flushed: tokio::sync::Notify,
    /// Milliseconds after `epoch` before which the store is not asked.
    down_until_ms: AtomicU64,
    /// The last call failed (for one log line when it answers again).
    failing: AtomicBool,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl SharedStore {
    /// A store for `config` (which names a URL), whose callers run
    /// the scripts of `scripts` (sources); connects on first use, so a node starts while the store
    /// is down.
    pub fn new(config: &SharedConfig, scripts: Vec<&'static str>, metrics: Arc<Metrics>) -> Result<Self, String> {
        let url = config.redis_url.as_deref().ok_or("no shared.redis_url")?;
        let url = url.replacen("valkey://", "redis://", 1);
        let info = redis::parse_redis_url(&url).ok_or("shared.redis_url: not a redis:// URL")?;
        let info = redis::IntoConnectionInfo::into_connection_info(info).map_err(|e| format!("shared.redis_url: {e}"))?;
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            _ => return Err("shared.redis_url: only plain TCP (redis://host:port) is supported".into()),
        };
        let settings = info.redis_settings();
        let address = format!("{host}:{port}");
        let connector = Connector {
            host,
            port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        };
        let timeout = Some(config.timeout());
        let pool = Pool::builder(connector)
            .max_size(config.pool_size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .build()
            .map_err(|e| format!("shared store: {e}"))?;
        Ok(Self {
            pool,
            address,
            config: config.clone(),
            scripts,
            deferred: Mutex::default(),
            flusher: OnceLock::new(),
            flushing: AtomicBool::new(false),
            flushed: tokio::sync::Notify::new(),
            down_until_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            epoch: Instant::now(),
            metrics,
        })
    }

    /// What requests get while the store cannot be reached.
    pub fn on_error(&self) -> OnSharedError {
        self.config.on_shared_error
    }

    /// `NAME` under the configured prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.config.key_prefix)
    }

    /// Queues a write nobody waits for: the next call takes it, or the
    /// flusher sends it with whatever else has gathered. The answer tells
    /// when the store has it.
    pub fn defer(self: &Arc<Self>, cmd: Cmd) -> DeferredWrite {
        let on_its_way = Arc::new(());
        let write = DeferredWrite(Arc::downgrade(&on_its_way));
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if deferred.len() >= MAX_DEFERRED {
            deferred.remove(0);
            self.metrics.shared_error("deferred_dropped");
        }
        deferred.push(Deferred { cmd, _on_its_way: on_its_way });
        drop(deferred);
        let notify = self.flusher.get_or_init(|| {
            let notify = Arc::new(tokio::sync::Notify::new());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(flush_loop(Arc::downgrade(self), notify.clone()));
            }
            notify
        });
        notify.notify_one();
        write
    }

    /// Runs the deferred writes and `cmds` in one round trip and answers
    /// `cmds`' replies. `op` names the call in metrics and logs. Nothing is
    /// tried in the second after a failure.
    pub async fn call(&self, op: &'static str, cmds: Vec<Cmd>) -> Result<Vec<Value>, SharedError> {
        self.call_with_deferred(op, cmds, Carrier::Caller).await
    }

    async fn call_with_deferred(&self, op: &'static str, cmds: Vec<Cmd>, carrier: Carrier) -> Result<Vec<Value>, SharedError> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if now_ms < self.down_until_ms.load(Ordering::Relaxed) {
            self.metrics.shared_error(op);
            return Err(SharedError::Backoff);
        }
        // A caller takes the deferred writes once the flusher's have gone
        // (those it failed to send are queued again, and taken here).
        let (deferred, flushing) = loop {
            let mut waiting = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
            if carrier == Carrier::Caller && self.flushing.load(Ordering::Acquire) {
                drop(waiting);
                self.behind_flush().await;
                continue;
            }
            let deferred = std::mem::take(&mut *waiting);
            let flushing = carrier == Carrier::Flusher && !deferred.is_empty();
            if flushing {
                self.flushing.store(true, Ordering::Release);
            }
            break (deferred, flushing);
        };
        // Cleared when this call ends, however it ends (after failed writes are queued again).
        let _flushing = flushing.then(|| FlushInFlight(self));
        let skip = deferred.len();
        let mut pipe = redis::pipe();
        for cmd in deferred.iter().map(|d| &d.cmd).chain(&cmds) {
            pipe.add_command(cmd.clone());
        }
        let started = Instant::now();
        let failure = match self.run(&pipe, skip + cmds.len()).await {
            Ok(mut values) => {
                self.metrics.shared_call(op, started.elapsed());
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(op, store = %self.address, "the shared store answers again");
                }
                let ours = values.split_off(skip.min(values.len()));
                // A deferred write the store refused would be refused again: counted, not kept.
                for refused in values.iter().filter_map(server_error) {
                    self.metrics.shared_error("deferred_refused");
                    tracing::warn!("the shared store refused a deferred write: {refused}");
                }
                match ours.iter().find_map(server_error) {
                    Some(refused) => SharedError::Failed(refused),
                    None => return Ok(ours),
                }
            }
            Err(e) => {
                // The deferred writes wait for the next try (each is safe to run twice).
                let mut waiting = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
                let room = MAX_DEFERRED.saturating_sub(waiting.len());
                let kept: Vec<Deferred> = deferred.into_iter().rev().take(room).rev().collect();
                waiting.splice(0..0, kept);
                e
            }
        };
        self.metrics.shared_error(op);
        let until = self.epoch.elapsed().as_millis() as u64 + BACKOFF.as_millis() as u64;
        self.down_until_ms.store(until, Ordering::Relaxed);
        // One log line an outage (the metric counts every failed call); the
        // tries each second after it log at debug level.
        if self.failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(op, store = %self.address, "{failure}; still failing");
        } else {
            let then = match self.config.on_shared_error {
                OnSharedError::Local => "counting on this node alone",
                OnSharedError::Reject => "answering 503",
            };
            tracing::error!(op, store = %self.address, "{failure}; {then} until it answers again (tried each second)");
        }
        Err(failure)
    }

    /// One pipeline, within the timeout; scripts the store forgot are
    /// loaded and the pipeline sent once more (what ran the first time is
    /// safe to run again: settlements apply once per reservation, writes
    /// are the same). Replies may be the store's errors.
    async fn run(&self, pipe: &redis::Pipeline, replies: usize) -> Result<Vec<Value>, SharedError> {
        let attempt = async {
            let mut connection = self.pool.get().await.map_err(|e| match e {
                // The connector's own words, not the pool's wrapping of them.
                PoolError::Backend(e) => e,
                other => other.to_string(),
            })?;
            let packed = pipe.get_packed_pipeline();
            let values = connection.exchange(&packed, replies).await?;
            let forgot = |v: &Value| matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript));
            if !values.iter().any(forgot) {
                return Ok(values);
            }
            let mut load = redis::pipe();
            for source in &self.scripts {
                load.cmd("SCRIPT").arg("LOAD").arg(*source);
            }
            connection.exchange(&load.get_packed_pipeline(), self.scripts.len()).await?;
            connection.exchange(&packed, replies).await
        };
        match tokio::time::timeout(self.config.timeout(), attempt).await {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(e)) => Err(SharedError::Failed(e)),
            Err(_) => Err(SharedError::Timeout(self.config.timeout_ms)),
        }
    }

    /// Sends the deferred writes (those that cannot go wait for the next
    /// try); answers whether they went.
    async fn flush(&self) -> bool {
        let pending = !self.deferred.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        !pending || self.call_with_deferred("flush", Vec::new(), Carrier::Flusher).await.is_ok()
    }

    /// Returns once the flusher's writes in flight have gone (bounded by
    /// its own timeout).
    async fn behind_flush(&self) {
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if !self.flushing.load(Ordering::Acquire) {
                return;
            }
            flushed.await;
        }
    }
}

/// A write waiting for a round trip. What it holds is dropped once the
/// store has answered the pipeline that carried it, or once it is given up.
struct Deferred {
    cmd: Cmd,
    _on_its_way: Arc<()>,
}

/// Tells whether a deferred write may not have reached the store yet.
pub struct DeferredWrite(Weak<()>);

impl DeferredWrite {
    /// Not answered by the store yet: waiting, in flight (a call that timed
    /// out counts: it may or may not have run), or queued again after a
    /// failure. False once answered or dropped (the deferred queue full).
    pub fn on_its_way(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// Who sends a round trip's deferred writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// A caller's round trip, in front of its own commands.
    Caller,
    /// The flusher, when no caller came for them.
    Flusher,
}

/// The flusher's writes in flight; dropped when they have gone or been
/// queued again, which lets the calls waiting behind them go.
struct FlushInFlight<'a>(&'a SharedStore);

impl Drop for FlushInFlight<'_> {
    fn drop(&mut self) {
        let store = self.0;
        let guard = store.deferred.lock().unwrap_or_else(|p| p.into_inner());
        store.flushing.store(false, Ordering::Release);
        drop(guard);
        store.flushed.notify_waiters();
    }
}

/// The store's error in a reply, as text.
fn server_error(value: &Value) -> Option<String> {
    match value {
        Value::ServerError(e) => Some(format!("{}: {}", e.code(), e.details().unwrap_or_default())),
        _ => None,
    }
}

/// Sends deferred writes as they come, until the store is gone; while the
/// store fails, tries again each backoff.
async fn flush_loop(store: Weak<SharedStore>, notify: Arc<tokio::sync::Notify>) {
    loop {
        notify.notified().await;
        // A request's pipeline usually takes them first.
        tokio::time::sleep(Duration::from_millis(2)).await;
        loop {
            let Some(store) = store.upgrade() else { return };
            if store.flush().await {
                break;
            }
            drop(store);
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// Where the store is and who the router is to it.
struct Connector {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

/// One socket to the store.
struct Connection {
    stream: TcpStream,
    decoder: Decoder<AnySendSyncPartialState, PointerOffset<[u8]>>,
    /// A call started and did not finish: replies may be on their way, so
    /// the socket is out of step and never reused.
    broken: bool,
}

impl Connection {
    /// Writes `packed` and reads `replies` replies.
    async fn exchange(&mut self, packed: &[u8], replies: usize) -> Result<Vec<Value>, String> {
        self.broken = true;
        self.stream.write_all(packed).await.map_err(|e| format!("cannot write to the shared store: {e}"))?;
        let mut values = Vec::with_capacity(replies);
        for _ in 0..replies {
            let value = redis::parse_redis_value_async(&mut self.decoder, &mut self.stream).await.map_err(|e| e.to_string())?;
            values.push(value);
        }
        self.broken = false;
        Ok(values)
    }
}

impl Manager for Connector {
    type Type = Connection;
    type Error = String;

    async fn create(&self) -> Result<Connection, String> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to the shared store at {}:{}: {e}", self.host, self.port))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut connection = Connection { stream, decoder: Decoder::new(), broken: false };
        let mut hello = redis::pipe();
        if let Some(password) = &self.password {
            let auth = hello.cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            auth.arg(password);
        }
        if self.db != 0 {
            hello.cmd("SELECT").arg(self.db);
        }
        let n = hello.cmd_iter().count();
        if n > 0 {
            let answers = connection.exchange(&hello.get_packed_pipeline(), n).await?;
            if let Some(Value::ServerError(e)) = answers.iter().find(|v| matches!(v, Value::ServerError(_))) {
                return Err(format!("the shared store refused the connection: {}", e.details().unwrap_or(e.code())));
            }
        }
        Ok(connection)
    }

    async fn recycle(&self, connection: &mut Connection, _: &PoolMetrics) -> RecycleResult<String> {
        if connection.broken {
            return Err(RecycleError::Message("interrupted mid-call".into()));
        }
        Ok(())
    }
}
