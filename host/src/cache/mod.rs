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
//! The node's store is quick_cache (bounded in bytes, S3-FIFO); with a
//! shared store, answers also go there with their TTL, so one node's
//! answer is a hit on the others.

pub mod replay;

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let mut out = KeyHasher::new(inbound.body_len + route.len() + 64);
    out.put(b"switchyard-cache-v2\0");
    out.put(route.as_bytes());
    out.put(b"\0");
    let mut tags: Vec<(&str, &str)> = inbound
        .view
        .tags
        .iter()
        .filter(|t| !t.key.starts_with(crate::openai::inbound::ROUTER_TAG_PREFIX))
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    tags.sort_unstable();
    for (k, v) in tags {
        write_str(&mut out, k);
        write_str(&mut out, v);
    }
    out.put(b"\0");
    match &inbound.native {
        Some(native) => {
            out.put(native.api.as_str().as_bytes());
            write_body(&mut out, &native.json_with_model(&inbound.model));
        }
        None => {
            out.put(b"chat");
            write_body(&mut out, &inbound.body);
        }
    }
    out.finish()
}

/// blake3 fed in blocks: its `update` costs more per call than per byte
/// for the small parts a key is made of, so they are gathered first; a
/// large body is never copied whole. The bytes hashed are the same either
/// way, and so are the keys.
struct KeyHasher {
    hasher: blake3::Hasher,
    block: Vec<u8>,
}

impl KeyHasher {
    const BLOCK: usize = 16 << 10;

    fn new(expected: usize) -> Self {
        Self { hasher: blake3::Hasher::new(), block: Vec::with_capacity(expected.min(Self::BLOCK)) }
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.block.len() + bytes.len() > Self::BLOCK {
            self.hasher.update(&self.block);
            self.block.clear();
        }
        if bytes.len() > Self::BLOCK {
            self.hasher.update(bytes);
        } else {
            self.block.extend_from_slice(bytes);
        }
    }

    fn finish(mut self) -> CacheKey {
        self.hasher.update(&self.block);
        *self.hasher.finalize().as_bytes()
    }
}

impl std::fmt::Write for KeyHasher {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.put(s.as_bytes());
        Ok(())
    }
}

fn write_body(out: &mut KeyHasher, body: &Map<String, Value>) {
    write_object(out, body, NOT_SEMANTIC);
}

/// An object's entries in key order, without the keys in `skip`.
fn write_object(out: &mut KeyHasher, map: &Map<String, Value>, skip: &[&str]) {
    let mut keys: Vec<&String> = map.keys().filter(|k| !skip.contains(&k.as_str())).collect();
    keys.sort();
    out.put(b"{");
    for k in keys {
        write_str(out, k);
        write_value(out, &map[k]);
    }
    out.put(b"}");
}

/// A string, prefixed with its length so that no two sequences run together.
fn write_str(out: &mut KeyHasher, s: &str) {
    out.put(b"s");
    out.put(&(s.len() as u64).to_le_bytes());
    out.put(s.as_bytes());
}

fn write_value(out: &mut KeyHasher, value: &Value) {
    match value {
        Value::Null => out.put(b"n"),
        Value::Bool(b) => out.put(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            out.put(b"#");
            // Writing into the hasher cannot fail.
            let _ = std::fmt::Write::write_fmt(out, format_args!("{n}"));
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.put(b"[");
            for item in items {
                write_value(out, item);
            }
            out.put(b"]");
        }
        Value::Object(map) => write_object(out, map, &[]),
    }
}

/// The node's kept answers, and the shared store's.
pub struct ResponseCache {
    local: LocalStore,
    shared: Option<Arc<SharedStore>>,
    metrics: Arc<Metrics>,
}

/// The node's store: S3-FIFO over shards, bounded by the bytes of what it
/// holds; an answer past its time is dropped when next read, or evicted
/// for room before the rest.
type LocalStore = quick_cache::sync::Cache<CacheKey, Kept, ByBytes, foldhash::fast::RandomState, CountEvictions>;

/// A kept answer and when it stops serving.
#[derive(Clone)]
struct Kept {
    entry: Arc<Entry>,
    until: Instant,
}

#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<CacheKey, Kept> for ByBytes {
    fn weight(&self, _key: &CacheKey, kept: &Kept) -> u64 {
        kept.entry.weight() as u64
    }
}

/// Counts the answers let go for room.
#[derive(Clone)]
struct CountEvictions(Arc<Metrics>);

impl quick_cache::Lifecycle<CacheKey, Kept> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: CacheKey, kept: Kept) {
        // One that had expired was not let go before its time.
        if kept.until > Instant::now() {
            self.0.cache_eviction();
        }
    }
}

/// Shards of the node's store: each holds a share of the bytes, so an
/// answer larger than a share is never kept; a share is at least 16 MiB.
fn shards_for(max_bytes: u64) -> usize {
    let shards = (max_bytes >> 24).clamp(1, 8);
    1 << shards.ilog2()
}

impl ResponseCache {
    /// A cache of at most `max_bytes` on this node, and on `shared`.
    pub fn new(max_bytes: u64, shared: Option<Arc<SharedStore>>, metrics: Arc<Metrics>) -> Self {
        let options = quick_cache::OptionsBuilder::new()
            .weight_capacity(max_bytes)
            // A guess at the number of answers (4 KiB each); the tables grow as needed.
            .estimated_items_capacity(usize::try_from(max_bytes >> 12).unwrap_or(usize::MAX).max(16))
            .shards(shards_for(max_bytes))
            .build()
            .unwrap_or_else(|e| unreachable!("the cache's options are valid: {e:?}"));
        let local = LocalStore::with_options(options, ByBytes, foldhash::fast::RandomState::default(), CountEvictions(metrics.clone()));
        Self { local, shared, metrics }
    }

    /// Bytes held on this node.
    pub fn local_bytes(&self) -> u64 {
        self.local.weight()
    }

    /// The answer kept for `key` on this node.
    pub fn local(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let kept = self.local.get(key)?;
        if kept.until > Instant::now() {
            return Some(kept.entry);
        }
        // Past its time: dropped, unless a fresh answer took its place meanwhile.
        self.local.remove_if(key, |k| Arc::ptr_eq(&k.entry, &kept.entry));
        None
    }

    /// Keeps `entry` on this node for its time.
    fn keep_local(&self, key: CacheKey, entry: Arc<Entry>) {
        let until = Instant::now() + entry.ttl;
        self.local.insert(key, Kept { entry, until });
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
        self.keep_local(*key, entry.clone());
        Some(entry)
    }

    /// The answer kept for `key`: this node's, else the shared store's. A
    /// store that cannot be reached is a miss.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        if let Some(entry) = self.local(key) {
            return Some(entry);
        }
        let (store, lookup) = (self.shared.as_ref()?, self.shared_lookup(key)?);
        // Boxed, as the admission's round trip is: see `Quotas::admit`.
        let replies = Box::pin(store.call("cache_get", lookup)).await.ok()?;
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
        self.keep_local(key, entry);
    }
}

fn hex(key: &CacheKey) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * key.len());
    for b in key {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
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
    fn the_node_keeps_answers_within_its_bytes_and_for_their_time() {
        let metrics = Arc::new(Metrics::new());
        let cache = ResponseCache::new(100_000, None, metrics.clone());
        let answer = |ttl| Entry::new(Bytes::from(vec![b'x'; 1_000]), vec![], "b".into(), None, ttl);
        for i in 0..1_000u32 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.put(key, answer(Duration::from_secs(60)));
        }
        assert!((50_000..=100_000).contains(&cache.local_bytes()), "{}", cache.local_bytes());
        assert!(metrics.cache_evictions.get() >= 900, "{}", metrics.cache_evictions.get());
        let key = [7; 32];
        cache.put(key, answer(Duration::from_millis(300)));
        assert!(cache.local(&key).is_some());
        std::thread::sleep(Duration::from_millis(400));
        assert!(cache.local(&key).is_none(), "past its time");
    }

    #[test]
    fn a_request_has_the_same_key_in_every_version() {
        // The nodes of a fleet being upgraded share entries on Redis: a
        // change that moves keys makes every one of them miss.
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-switchyard-team", hyper::header::HeaderValue::from_static("a"));
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"seed":7,"top_p":0.5,
            "stop":["x",null,true],"user":"u","stream":true,"response_format":{"type":"json_object","b":{"z":1,"a":-2.5e-3}}}"#;
        let caller = crate::openai::inbound::CallerIdentity::default();
        let limits = crate::openai::inbound::ViewLimits { text_bytes: 1 << 20, messages: 64 };
        let cx = crate::openai::inbound::ParseContext { headers: &headers, caller: &caller, request_id: "r", limits, seed: 1, api: None };
        let inbound = crate::openai::inbound::parse(ApiSurface::Chat, &bytes::Bytes::from_static(body), cx).unwrap();
        assert_eq!(hex(&key("route", &inbound)), "e49cb09e260f7548334e4ec406a634925d49a05567fb518f3db49d2df18de956");
    }

    #[test]
    fn the_key_hasher_hashes_what_it_is_given_however_it_comes() {
        let parts: Vec<Vec<u8>> = [3, 20_000, 1, KeyHasher::BLOCK, 5, KeyHasher::BLOCK - 5, 70_000, 0, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let mut hasher = KeyHasher::new(10);
        for part in &parts {
            hasher.put(part);
        }
        assert_eq!(hasher.finish(), *blake3::hash(&parts.concat()).as_bytes());
    }

    #[test]
    fn keys_are_named_in_lower_case_hex() {
        let mut key = [0u8; 32];
        key[0] = 0xab;
        key[31] = 0x0f;
        assert_eq!(hex(&key), format!("ab{}0f", "0".repeat(60)));
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
