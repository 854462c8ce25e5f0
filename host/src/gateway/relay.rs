//! Where a stream is passed to the client: event by event, checked, with an
//! idle limit. A stream that breaks after bytes reached the client ends with
//! an OpenAI-style error event and no `[DONE]`, so SDKs raise an error
//! instead of taking a cut answer for a whole one.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use std::sync::Arc;

use super::attempts::Attempt;
use crate::metrics::Metrics;
use crate::openai::sse::{frame, SseEvent, DONE_FRAME};
use crate::upstream::Upstream;
use crate::upstream::{AttemptFailure, EventStream};

/// What the client has received of a stream so far. A later step continues
/// a stream cut mid-answer on the next target from here.
#[derive(Debug, Default)]
pub(super) struct StreamedSoFar {
    /// Text of the choices' content deltas, in order.
    pub text: String,
    /// Chunks passed on.
    pub chunks: u32,
}

impl StreamedSoFar {
    /// Notes a chunk's text; returns its token usage when it carries one.
    fn note(&mut self, chunk: &[u8]) -> Option<(u64, u64)> {
        self.chunks += 1;
        let value = serde_json::from_slice::<serde_json::Value>(chunk).ok()?;
        if let Some(text) = value
            .pointer("/choices/0/delta/content")
            .and_then(|v| v.as_str())
            .or_else(|| value.pointer("/choices/0/text").and_then(|v| v.as_str()))
        {
            self.text.push_str(text);
        }
        crate::openai::usage(&value)
    }
}

/// Starts relaying; returns the receiver the response body reads from.
pub(super) fn start(
    first: SseEvent,
    rest: EventStream,
    attempt: Attempt,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    request_id: String,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(relay(first, rest, attempt, upstream, metrics, tx, request_id));
    rx
}

async fn relay(
    first: SseEvent,
    mut rest: EventStream,
    attempt: Attempt,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Bytes>,
    request_id: String,
) {
    let idle = Duration::from_millis(upstream.config.stream_idle_timeout_ms);
    let backend = upstream.name();
    let mut so_far = StreamedSoFar::default();
    let mut next = Some(Ok(first));
    loop {
        let event = match next.take() {
            Some(event) => event,
            None => match tokio::time::timeout(idle, rest.next()).await {
                Ok(Some(event)) => event,
                Ok(None) => Err(AttemptFailure::Protocol("the stream ended without [DONE]".into())),
                Err(_) => Err(AttemptFailure::Timeout("stream idle")),
            },
        };
        match event {
            Ok(SseEvent::Data(chunk)) => {
                if let Some((input, output)) = so_far.note(&chunk) {
                    metrics.tokens(backend, input, output, upstream.config.input_price, upstream.config.output_price);
                }
                if tx.send(frame(&chunk)).await.is_err() {
                    // The client went away: not the backend's fault.
                    tracing::info!(%request_id, %backend, chunks = so_far.chunks, "client closed the stream");
                    return;
                }
            }
            Ok(SseEvent::Done) => {
                let _ = tx.send(Bytes::from_static(DONE_FRAME)).await;
                attempt.succeed();
                return;
            }
            Err(failure) => {
                tracing::warn!(%request_id, %backend, chunks = so_far.chunks, chars = so_far.text.len(), "stream failed after it started: {}", failure.describe());
                let error = serde_json::json!({"error": {
                    "message": format!("the upstream stream from backend `{backend}` failed after {} chunks: {}", so_far.chunks, failure.describe()),
                    "type": "upstream_error",
                    "code": "stream_interrupted",
                }});
                let _ = tx.send(frame(error.to_string().as_bytes())).await;
                metrics.stream_failure(backend);
                attempt.fail();
                return;
            }
        }
    }
}
