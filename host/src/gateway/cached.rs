//! Where the response cache meets a request: an answer from a kept entry,
//! in the client's API and delivery (plain or streamed), and the keeping
//! of a stream's answer as it passes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::framing::Framing;
use super::http::{json_response, messages_answer, responses_answer, Body};
use crate::cache::replay::{chunks_from_completion, usage_chunk, Capture};
use crate::cache::{CacheKey, Entry, ResponseCache};
use crate::error::GatewayError;
use crate::native::NativeApi;
use crate::openai::inbound::InboundRequest;

/// A stream on its way to be kept.
pub(super) struct CacheWrite {
    cache: Arc<ResponseCache>,
    key: CacheKey,
    ttl: Duration,
    capture: Capture,
}

impl CacheWrite {
    /// Keeps what streams under `key` for `ttl`, if it fits in `max_bytes`.
    pub(super) fn new(cache: Arc<ResponseCache>, key: CacheKey, ttl: Duration, max_bytes: usize) -> Self {
        Self { cache, key, ttl, capture: Capture::new(max_bytes) }
    }

    /// A chunk sent to the client; `original`: from the stream's first
    /// upstream (a rescue's continuation spoils the capture).
    pub(super) fn push(&mut self, chunk: &Bytes, original: bool) {
        if original {
            self.capture.push(chunk);
        } else {
            self.capture.spoil();
        }
    }

    /// The stream ended cleanly on `backend`: kept, if it may be.
    pub(super) fn finish(self, backend: &str) {
        if let Some(kept) = self.capture.finish() {
            self.cache.put(self.key, Entry::new(kept.completion, kept.chunks, backend.to_owned(), kept.usage, self.ttl));
        }
    }
}

/// The answer to `inbound` from `entry`: plain, or a stream of the entry's
/// chunks (a usage chunk when the client asked for one) framed for the
/// client's API, sent whole.
pub(super) fn answer(entry: &Entry, inbound: &InboundRequest) -> Result<Response<Body>, GatewayError> {
    if !inbound.stream {
        let body = match inbound.native.as_ref().map(|n| n.api) {
            None => entry.completion.clone(),
            Some(NativeApi::Messages) => messages_answer(&entry.completion)?,
            Some(NativeApi::Responses) => responses_answer(&entry.completion, inbound)?,
        };
        return Ok(json_response(StatusCode::OK, body));
    }
    let completion: Value =
        serde_json::from_slice(&entry.completion).map_err(|e| GatewayError::internal(format!("a cached answer is not JSON: {e}")))?;
    let synthesized;
    let chunks = if entry.chunks.is_empty() {
        synthesized = chunks_from_completion(&completion);
        &synthesized
    } else {
        &entry.chunks
    };
    let mut framing = Framing::of(inbound);
    let mut body = BytesMut::new();
    for chunk in chunks {
        body.extend_from_slice(&framing.replayed(chunk));
    }
    if inbound.include_usage {
        if let Some(usage) = usage_chunk(&completion) {
            body.extend_from_slice(&framing.replayed(&usage));
        }
    }
    body.extend_from_slice(&framing.done());
    let mut response = Response::new(super::http::full_body(body.freeze()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
