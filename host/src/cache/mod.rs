//! The exact response cache: a route's answers kept by a hash of the
//! request's meaning and replayed, plain or streamed, without an upstream
//! call.
//!
//! An answer is kept in one form, a chat completion and, when it was
//! streamed, its chunks (`replay.rs` turns either into the other), so a
//! streamed request can be answered from a plain one's answer and the
//! reverse, and every ingress API (chat, Messages, Responses) renders it
//! in its own shapes. Only answers in OpenAI's shape from the original
//! upstream are kept: a backend's own Messages or Responses answer, a
//! rescued stream or one that did not end cleanly never is.
//!
//! The node's store is moka (bounded in bytes, per-entry expiry); with a
//! shared store, answers also go there with their TTL, so one node's
//! answer is a hit on the others.

pub mod replay;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::config::{CacheMode, RouteCacheConfig};
use crate::contract::ApiSurface;
use crate::metrics::Metrics;
use crate::openai::inbound::InboundRequest;
use crate::shared_store::SharedStore;

/// The hash of a request's meaning.
pub type CacheKey = [u8; 32];

/// Body fields that do not change the answer: who asks, how it is
/// delivered, what is stored about it.
const NOT_SEMANTIC: &[&str] = &["user", "stream", "stream_options", "safety_identifier", "store", "prompt_cache_key", "service_tier"];

/// A kept answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The chat completion.
    pub completion: Bytes,
    /// Its chunks as they streamed, when it was streamed (usage chunk
    /// excluded: replay adds one when asked).
    pub chunks: Vec<Bytes>,
    /// The backend that answered it.
    pub backend: String,
    /// `(prompt, completion)` tokens, when the answer reported them.
    pub usage: Option<(u64, u64)>,
    ttl: Duration,
}

impl Entry {
    /// An answer to keep for `ttl`; `usage` is the completion's (known to
    /// the caller, so the completion is not parsed again).
    pub fn new(completion: Bytes, chunks: Vec<Bytes>, backend: String, usage: Option<(u64, u64)>, ttl: Duration) -> Self {
        Self { completion, chunks, backend, usage, ttl }
    }

    /// Bytes it holds.
    pub fn weight(&self) -> usize {
        self.completion.len() + self.chunks.iter().map(Bytes::len).sum::<usize>() + self.backend.len() + 64
    }

    /// The form kept on the shared store: lengths (u32, little-endian)
    /// before each part.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.weight());
        let mut put = |part: &[u8]| {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        };
        put(self.backend.as_bytes());
        put(&self.completion);
        for chunk in &self.chunks {
            put(chunk);
        }
        out
    }

    fn decode(mut bytes: &[u8], ttl: Duration) -> Option<Self> {
        let mut parts = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            parts.push(Bytes::copy_from_slice(bytes.get(4..4 + len)?));
            bytes = &bytes[4 + len..];
        }
        let mut parts = parts.into_iter();
        let backend = String::from_utf8(parts.next()?.to_vec()).ok()?;
        let completion = parts.next()?;
        let usage = serde_json::from_slice::<Value>(&completion).ok().and_then(|c| replay::usage_of(&c));
        Some(Self::new(completion, parts.collect(), backend, usage, ttl))
    }
}

/// What the cache does for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePlan {
    /// The request's key.
    pub key: CacheKey,
    /// Whether a kept answer may serve it.
    pub read: bool,
    /// Whether its answer may be kept.
    pub write: bool,
    /// The route's settings.
    pub config: RouteCacheConfig,
}

/// Why a request is not looked up: the `x-switchyard-cache: skip` cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a chat request, `n` > 1, or not deterministic in that mode.
    NotEligible,
    /// `Cache-Control: no-cache` or `no-store`.
    Client,
    /// The decision's label `cache=skip`.
    Policy,
}

/// The client's `Cache-Control`: (may read, may write).
pub fn client_allows(cache_control: Option<&str>) -> (bool, bool) {
    let Some(value) = cache_control else { return (true, true) };
    let has = |directive: &str| value.split(',').any(|d| d.trim().eq_ignore_ascii_case(directive));
    if has("no-store") {
        (false, false)
    } else if has("no-cache") {
        (false, true)
    } else {
        (true, true)
    }
}

/// What the cache does for `inbound` on a route cached by `config`, given
/// the client's `Cache-Control` (the policy's say comes after:
/// [`policy_skips`]).
pub fn plan(config: &RouteCacheConfig, route: &str, inbound: &InboundRequest, cache_control: Option<&str>) -> Result<CachePlan, Skip> {
    if inbound.surface != ApiSurface::Chat || inbound.body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(Skip::NotEligible);
    }
    if config.mode == CacheMode::Deterministic {
        let cold = inbound.body.get("temperature").and_then(Value::as_f64) == Some(0.0);
        let seeded = inbound.body.get("seed").is_some_and(|s| !s.is_null());
        if !cold && !seeded {
            return Err(Skip::NotEligible);
        }
    }
    let (read, write) = client_allows(cache_control);
    if !read && !write {
        return Err(Skip::Client);
    }
    Ok(CachePlan { key: key(route, inbound), read, write, config: *config })
}

/// Whether the decision's labels skip the cache (`cache=skip`).
pub fn policy_skips(labels: &[(String, String)]) -> bool {
    labels.iter().any(|(k, v)| k == "cache" && v == "skip")
}

/// The hash of the route and the request's meaning: the body as the client
/// sent it (a Messages or Responses request's own body), its object keys in
/// order, without [`NOT_SEMANTIC`] fields; and the tags the policy routes
/// on (`x-switchyard-*` headers, `metadata`; not the router's own), so that
/// requests a policy may send to different models never share an answer.
pub fn key(route: &str, inbound: &InboundRequest) -> CacheKey {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"switchyard-cache-v2\0");
    hasher.update(route.as_bytes());
    hasher.update(b"\0");
    let mut tags: Vec<(&str, &str)> = inbound
        .view
        .tags
        .iter()
        .filter(|t| !t.key.starts_with(crate::openai::inbound::ROUTER_TAG_PREFIX))
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    tags.sort_unstable();
    for (k, v) in tags {
        hash_value(&mut hasher, &Value::String(k.to_owned()));
        hash_value(&mut hasher, &Value::String(v.to_owned()));
    }
    hasher.update(b"\0");
    match &inbound.native {
        Some(native) => {
            hasher.update(native.api.as_str().as_bytes());
            hash_body(&mut hasher, &native.json_with_model(&inbound.model));
        }
        None => {
            hasher.update(b"chat");
            hash_body(&mut hasher, &inbound.body);
        }
    }
    *hasher.finalize().as_bytes()
}

fn hash_body(hasher: &mut blake3::Hasher, body: &Map<String, Value>) {
    let mut keys: Vec<&String> = body.keys().filter(|k| !NOT_SEMANTIC.contains(&k.as_str())).collect();
    keys.sort();
    hasher.update(b"{");
    for k in keys {
        hash_value(hasher, &Value::String(k.clone()));
        hash_value(hasher, &body[k]);
    }
    hasher.update(b"}");
}

fn hash_value(hasher: &mut blake3::Hasher, value: &Value) {
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            hasher.update(b"#");
            hasher.update(n.to_string().as_bytes())
        }
        Value::String(s) => {
            hasher.update(b"s");
            hasher.update(&(s.len() as u64).to_le_bytes());
            hasher.update(s.as_bytes())
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                hash_value(hasher, item);
            }
            hasher.update(b"]")
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for k in keys {
                hash_value(hasher, &Value::String(k.clone()));
                hash_value(hasher, &map[k]);
            }
            hasher.update(b"}")
        }
    };
}

/// The node's kept answers, and the shared store's.
pub struct ResponseCache {
    local: moka::sync::Cache<CacheKey, Arc<Entry>, foldhash::fast::RandomState>,
    shared: Option<Arc<SharedStore>>,
    metrics: Arc<Metrics>,
}

struct PerEntryTtl;

impl moka::Expiry<CacheKey, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &CacheKey, entry: &Arc<Entry>, _at: std::time::Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

impl ResponseCache {
    /// A cache of at most `max_bytes` on this node, and on `shared`.
    pub fn new(max_bytes: u64, shared: Option<Arc<SharedStore>>, metrics: Arc<Metrics>) -> Self {
        let evictions = metrics.clone();
        let local = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, entry: &Arc<Entry>| u32::try_from(entry.weight()).unwrap_or(u32::MAX))
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.cache_eviction();
                }
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self { local, shared, metrics }
    }

    /// Bytes held on this node.
    pub fn local_bytes(&self) -> u64 {
        // moka counts writes in batches; settle them first (scrape time only).
        self.local.run_pending_tasks();
        self.local.weighted_size()
    }

    /// The answer kept for `key` on this node.
    pub fn local(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.local.get(key)
    }

    /// The commands that read `key`'s answer from the shared store (none
    /// without one), to send in a request's pipeline; [`Self::shared_entry`]
    /// reads their replies.
    pub fn shared_lookup(&self, key: &CacheKey) -> Option<Vec<redis::Cmd>> {
        let store = self.shared.as_ref()?;
        let name = store.key(&format!("c:{}", hex(key)));
        let mut get = redis::cmd("GET");
        get.arg(&name);
        let mut pttl = redis::cmd("PTTL");
        pttl.arg(&name);
        Some(vec![get, pttl])
    }

    /// The answer in the replies of [`Self::shared_lookup`]'s commands,
    /// then kept on this node for the rest of its time.
    pub fn shared_entry(&self, key: &CacheKey, replies: Vec<redis::Value>) -> Option<Arc<Entry>> {
        let mut replies = replies.into_iter();
        let bytes: Option<Vec<u8>> = redis::from_redis_value(replies.next()?).ok()?;
        let ttl_ms: i64 = redis::from_redis_value(replies.next()?).ok()?;
        let ttl = Duration::from_millis(u64::try_from(ttl_ms).ok().filter(|ms| *ms > 0)?);
        let entry = Arc::new(Entry::decode(&bytes?, ttl)?);
        self.local.insert(*key, entry.clone());
        Some(entry)
    }

    /// The answer kept for `key`: this node's, else the shared store's. A
    /// store that cannot be reached is a miss.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        if let Some(entry) = self.local(key) {
            return Some(entry);
        }
        let (store, lookup) = (self.shared.as_ref()?, self.shared_lookup(key)?);
        let replies = store.call("cache_get", lookup).await.ok()?;
        self.shared_entry(key, replies)
    }

    /// Keeps `entry` for `key` (on the shared store too, without waiting).
    pub fn put(&self, key: CacheKey, entry: Entry) {
        let entry = Arc::new(entry);
        self.metrics.cache_stored(entry.weight());
        if let Some(store) = &self.shared {
            let mut set = redis::cmd("SET");
            set.arg(store.key(&format!("c:{}", hex(&key)))).arg(entry.encode()).arg("PX").arg((entry.ttl.as_millis() as u64).max(1));
            store.defer(set);
        }
        self.local.insert(key, entry);
    }
}

fn hex(key: &CacheKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_the_shared_form() {
        let entry = Entry::new(
            Bytes::from_static(b"{\"a\":1}"),
            vec![Bytes::from_static(b"x"), Bytes::new()],
            "b".into(),
            None,
            Duration::from_secs(5),
        );
        assert_eq!(Entry::decode(&entry.encode(), Duration::from_secs(5)), Some(entry));
        assert_eq!(Entry::decode(&[9, 0, 0, 0, 1], Duration::from_secs(1)), None, "a length past the end");
    }

    #[test]
    fn the_client_says_what_the_cache_may_do() {
        for (header, allows) in [
            (None, (true, true)),
            (Some("no-cache"), (false, true)),
            (Some("max-age=0, No-Store"), (false, false)),
            (Some("max-age=60"), (true, true)),
        ] {
            assert_eq!(client_allows(header), allows, "{header:?}");
        }
    }
}
