//! Configuration of what a caller may use: rate limits, spend budgets, the
//! response cache, and the shared store (Redis) that puts them across nodes.

use std::time::Duration;

use serde::Deserialize;

/// `limits` of a client key or a route: per minute and at once. Unset
/// means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute: reserved at admission (the request's estimate plus
    /// its `max_tokens`), settled with the real usage when the answer ends.
    pub tpm: Option<u64>,
    /// Requests in flight at once (a stream counts until it ends).
    pub concurrency: Option<u32>,
}

impl LimitsConfig {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.concurrency.is_some()
    }
}

/// `budget` of a client key: USD spent per UTC day and per UTC month,
/// priced from the backends' `input_price` and `output_price`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// USD per UTC day.
    pub daily_usd: Option<f64>,
    /// USD per UTC month.
    pub monthly_usd: Option<f64>,
}

impl BudgetConfig {
    /// Whether any budget is set.
    pub fn any(&self) -> bool {
        self.daily_usd.is_some() || self.monthly_usd.is_some()
    }
}

/// Which requests a route's cache answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Only requests whose answer is meant to repeat: `temperature` 0 or a
    /// `seed`.
    #[default]
    Deterministic,
    /// Every request.
    All,
}

/// `routes[].cache`: exact answers kept and replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCacheConfig {
    /// How long an answer is kept, in seconds.
    pub ttl_s: u64,
    /// Answers larger than this (the stored form) are not kept.
    pub max_entry_bytes: usize,
    /// Which requests are answered from the cache.
    pub mode: CacheMode,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        Self { ttl_s: 300, max_entry_bytes: 1 << 20, mode: CacheMode::Deterministic }
    }
}

impl RouteCacheConfig {
    /// `ttl_s`.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s)
    }
}

/// `[cache]`: the node's own store of cached answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes of answers kept in memory; the least useful go first.
    pub max_mib: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { max_mib: 64 }
    }
}

/// What a node does when the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSharedError {
    /// Count on the node alone until the store is back (limits then hold
    /// per node, not per fleet).
    #[default]
    Local,
    /// Answer 503: no request passes unchecked.
    Reject,
}

/// `[shared]`: limits, budgets and the cache on Redis (or Valkey), shared by
/// every node that names the same store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedConfig {
    /// `redis://[user:password@]host:port[/db]` (use `${ENV_VAR}` for a
    /// password); unset keeps everything on the node.
    pub redis_url: Option<String>,
    /// What happens while the store cannot be reached.
    pub on_shared_error: OnSharedError,
    /// Longest wait for one store call, in ms.
    pub timeout_ms: u64,
    /// Connections to the store (each multiplexes many calls).
    pub pool_size: usize,
    /// Prefix of every key the router writes, so that fleets can share a
    /// store.
    pub key_prefix: String,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self { redis_url: None, on_shared_error: OnSharedError::Local, timeout_ms: 50, pool_size: 4, key_prefix: "switchyard".into() }
    }
}

impl SharedConfig {
    /// `timeout_ms`.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Checks the quota settings; errors are (key, problem).
pub(super) fn validate(
    clients: &[super::ClientConfig],
    routes: &[super::RouteConfig],
    cache: &CacheConfig,
    shared: &SharedConfig,
) -> Result<(), (String, String)> {
    for (i, c) in clients.iter().enumerate() {
        if let Some(limits) = &c.limits {
            check_limits(limits, &format!("clients[{i}].limits"))?;
        }
        if let Some(budget) = &c.budget {
            for (field, usd) in [("daily_usd", budget.daily_usd), ("monthly_usd", budget.monthly_usd)] {
                if usd.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                    return Err((format!("clients[{i}].budget.{field}"), "must be a positive number of dollars".into()));
                }
            }
        }
    }
    for (i, r) in routes.iter().enumerate() {
        if let Some(limits) = &r.limits {
            check_limits(limits, &format!("routes[{i}].limits"))?;
        }
        if let Some(cache) = &r.cache {
            if cache.ttl_s == 0 {
                return Err((format!("routes[{i}].cache.ttl_s"), "must be more than 0".into()));
            }
            if cache.max_entry_bytes < 64 {
                return Err((format!("routes[{i}].cache.max_entry_bytes"), "must be at least 64".into()));
            }
        }
    }
    if cache.max_mib == 0 {
        return Err(("cache.max_mib".into(), "must be at least 1".into()));
    }
    if let Some(url) = &shared.redis_url {
        let parsed = reqwest::Url::parse(url).map_err(|e| ("shared.redis_url".to_owned(), format!("is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "redis" | "valkey") {
            return Err(("shared.redis_url".into(), format!("must start with redis:// (not {}://)", parsed.scheme())));
        }
    }
    if shared.timeout_ms == 0 || shared.timeout_ms > 10_000 {
        return Err(("shared.timeout_ms".into(), "must be between 1 and 10000".into()));
    }
    if shared.pool_size == 0 || shared.pool_size > 64 {
        return Err(("shared.pool_size".into(), "must be between 1 and 64".into()));
    }
    if shared.key_prefix.is_empty() || shared.key_prefix.len() > 64 || shared.key_prefix.contains(char::is_whitespace) {
        return Err(("shared.key_prefix".into(), "must be 1 to 64 characters without spaces".into()));
    }
    Ok(())
}

fn check_limits(limits: &LimitsConfig, key: &str) -> Result<(), (String, String)> {
    for (field, zero) in [("rpm", limits.rpm == Some(0)), ("tpm", limits.tpm == Some(0)), ("concurrency", limits.concurrency == Some(0))] {
        if zero {
            return Err((format!("{key}.{field}"), "must be at least 1 (leave it out for no limit)".into()));
        }
    }
    Ok(())
}
