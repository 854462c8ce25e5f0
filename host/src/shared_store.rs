//! The shared store: a Redis (or Valkey) server that the nodes of a fleet
//! share for limits, budgets and cached answers.
//!
//! Calls are bounded by `shared.timeout_ms`. After a failure the store is
//! left alone for a second (every request meanwhile gets
//! `on_shared_error`), then tried again: a store that comes back is used
//! again without a restart. Connections are multiplexed and reconnect by
//! themselves (redis-rs's `ConnectionManager`), a few of them round robin.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{OnSharedError, SharedConfig};
use crate::metrics::Metrics;

/// How long the store is left alone after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

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

/// A connection to the shared store.
pub struct SharedStore {
    client: redis::Client,
    connections: OnceLock<Vec<ConnectionManager>>,
    next: AtomicUsize,
    config: SharedConfig,
    /// Milliseconds after `epoch` before which the store is not asked.
    down_until_ms: AtomicU64,
    /// The last call failed (for one log line when it answers again).
    failing: AtomicBool,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl SharedStore {
    /// A store for `config` (which names a URL); connects on first use, so
    /// a node starts while the store is down.
    pub fn new(config: &SharedConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let url = config.redis_url.as_deref().ok_or("no shared.redis_url")?;
        let url = url.replacen("valkey://", "redis://", 1);
        let client = redis::Client::open(url).map_err(|e| format!("shared.redis_url: {e}"))?;
        Ok(Self {
            client,
            connections: OnceLock::new(),
            next: AtomicUsize::new(0),
            config: config.clone(),
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

    fn connection(&self) -> Result<ConnectionManager, SharedError> {
        let connections = match self.connections.get() {
            Some(c) => c,
            None => {
                let timeout = Some(self.config.timeout());
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(BACKOFF);
                let made: Result<Vec<_>, _> =
                    (0..self.config.pool_size).map(|_| self.client.get_connection_manager_lazy(config.clone())).collect();
                let made = made.map_err(|e| SharedError::Failed(e.to_string()))?;
                // Another caller may have won the race; either set serves.
                let _ = self.connections.set(made);
                self.connections.get().ok_or_else(|| SharedError::Failed("no connection".into()))?
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % connections.len();
        Ok(connections[i].clone())
    }

    /// Runs one call (`op` names it in metrics and logs), unless the store
    /// failed within the last second; a failure starts that second.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if now_ms < self.down_until_ms.load(Ordering::Relaxed) {
            self.metrics.shared_error(op);
            return Err(SharedError::Backoff);
        }
        let result = match self.connection() {
            Ok(connection) => match tokio::time::timeout(self.config.timeout(), f(connection)).await {
                Ok(Ok(value)) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::warn!(op, "the shared store answers again");
                    }
                    return Ok(value);
                }
                Ok(Err(e)) => SharedError::Failed(e.to_string()),
                Err(_) => SharedError::Timeout(self.config.timeout_ms),
            },
            Err(e) => e,
        };
        self.metrics.shared_error(op);
        self.failing.store(true, Ordering::Relaxed);
        let until = self.epoch.elapsed().as_millis() as u64 + BACKOFF.as_millis() as u64;
        // One log line a backoff, not one per request.
        if self.down_until_ms.swap(until, Ordering::Relaxed) <= now_ms {
            let then = match self.config.on_shared_error {
                OnSharedError::Local => "counting on this node alone",
                OnSharedError::Reject => "answering 503",
            };
            tracing::error!(op, "{result}; {then} until it answers again (tried each second)");
        }
        Err(result)
    }
}
