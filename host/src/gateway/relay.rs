//! Where a stream is passed to the client: event by event, checked, with an
//! idle limit. A stream that breaks after bytes reached the client ends with
//! an OpenAI-style error event and no `[DONE]`, so SDKs raise an error
//! instead of taking a cut answer for a whole one.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::attempts::Attempt;
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use crate::openai::sse::{frame, SseEvent, DONE_FRAME};
use crate::telemetry;
use crate::upstream::Upstream;
use crate::upstream::{AttemptFailure, EventStream};
use tracing::Instrument;

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
        let chunk: ChunkView<'_> = serde_json::from_slice(chunk).ok()?;
        let first = chunk.choices.as_deref().and_then(<[_]>::first);
        if let Some(text) = first.and_then(|c| c.delta.as_ref().and_then(|d| d.content.as_deref()).or(c.text.as_deref())) {
            self.text.push_str(text);
        }
        let usage = chunk.usage?;
        Some((usage.prompt_tokens?, usage.completion_tokens.unwrap_or(0)))
    }
}

// What the relay reads of a chunk, borrowed where it can be; the rest is
// skipped without being built (a `serde_json::Value` per event was ~8 % of
// a streaming profile).
#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<UsageView>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UsageView {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// A stream ready to be relayed: its first event (already framed for the
/// client), the rest, the attempt it belongs to, and the sender the rest of
/// the response body reads from.
pub(super) struct Relay {
    first: SseEvent,
    rest: EventStream,
    attempt: Attempt,
    upstream: Arc<Upstream>,
    tx: mpsc::Sender<Bytes>,
    limits: StreamLimits,
}

/// How long a stream may wait on its client, and run in all.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamLimits {
    /// The client stopped reading this long: the stream ends.
    pub write_timeout: Duration,
    /// The stream has run this long: it ends with an error event.
    pub max_duration: Duration,
}

impl Relay {
    /// Prepares relaying; returns the first event's frame, which the response
    /// body starts with (so it leaves with the headers, without waiting for
    /// the relay task), and the receiver of the rest.
    /// `limits` end the stream when the client stops taking it, or when it
    /// has run too long.
    pub(super) fn new(
        first: SseEvent,
        rest: EventStream,
        attempt: Attempt,
        upstream: Arc<Upstream>,
        limits: StreamLimits,
    ) -> (Self, Bytes, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(32);
        let first_frame = match &first {
            SseEvent::Data(chunk) => frame(chunk),
            SseEvent::Done => Bytes::from_static(DONE_FRAME),
        };
        (Self { first, rest, attempt, upstream, tx, limits }, first_frame, rx)
    }

    /// Starts relaying. `record` is the request's decision-log record, if
    /// any, and whether it is notable: written when the stream ends, with
    /// its tokens and how it ended (a stream that did not end well is notable).
    pub(super) fn start(self, metrics: Arc<Metrics>, request_id: String, record: Option<(Arc<DecisionLog>, Value, bool)>) {
        let span = telemetry::stream_span(self.upstream.name());
        tokio::spawn(async move {
            let started = Instant::now();
            let (so_far, usage, end) = self.relay(&metrics, &request_id).instrument(span.clone()).await;
            telemetry::record_stream_end(&span, so_far.chunks, &end);
            if let Some((log, mut record, notable)) = record {
                record["tokens"] = crate::decision_log::tokens_json(usage);
                let notable = notable || end != "done";
                record["stream"] = json!({"chunks": so_far.chunks, "end": end, "ms": started.elapsed().as_secs_f64() * 1000.0});
                log.write_sampled(record, notable);
            }
        });
    }

    /// Passes events on until the stream ends; returns what was sent, the
    /// token usage seen, and how it ended: `done`, `client_closed`,
    /// `client_stalled` (it stopped reading for `write_timeout`),
    /// `max_duration`, or the failure. Returning drops the upstream stream and settles the attempt,
    /// so the upstream connection and the backend's in-flight count are free.
    async fn relay(self, metrics: &Metrics, request_id: &str) -> (StreamedSoFar, Option<(u64, u64)>, String) {
        let Self { first, mut rest, attempt, upstream, tx, limits } = self;
        let StreamLimits { write_timeout, max_duration } = limits;
        let ends_at = Instant::now() + max_duration;
        let idle = Duration::from_millis(upstream.config.stream_idle_timeout_ms);
        let backend = upstream.name();
        let mut so_far = StreamedSoFar::default();
        let mut usage = None;
        // The first event is in the body already: noted here, not sent.
        let mut next = Some(Ok(first));
        let mut sent = true;
        loop {
            let event = match next.take() {
                Some(event) => event,
                None => {
                    sent = false;
                    let left = ends_at.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(idle.min(left), rest.next()).await {
                        Ok(Some(event)) => event,
                        Ok(None) => Err(AttemptFailure::Protocol("the stream ended without [DONE]".into())),
                        // The router's own limit, not the backend's fault: the attempt is released, not failed.
                        Err(_) if left <= idle => {
                            tracing::info!(%request_id, %backend, chunks = so_far.chunks, "stream ended at its maximum duration");
                            let error = serde_json::json!({"error": {
                                "message": format!("the stream ran for its maximum duration ({} ms) and was ended", max_duration.as_millis()),
                                "type": "server_error",
                                "code": "stream_too_long",
                            }});
                            let _ = tokio::time::timeout(write_timeout, tx.send(frame(error.to_string().as_bytes()))).await;
                            return (so_far, usage, "max_duration".into());
                        }
                        Err(_) => Err(AttemptFailure::Timeout("stream idle")),
                    }
                }
            };
            match event {
                Ok(SseEvent::Data(chunk)) => {
                    if let Some((input, output)) = so_far.note(&chunk) {
                        metrics.tokens(backend, input, output, upstream.config.input_price, upstream.config.output_price);
                        usage = Some((input, output));
                    }
                    if !sent {
                        match tokio::time::timeout(write_timeout, tx.send(frame(&chunk))).await {
                            Ok(Ok(())) => {}
                            // The client went away: not the backend's fault.
                            Ok(Err(_)) => {
                                tracing::info!(%request_id, %backend, chunks = so_far.chunks, "client closed the stream");
                                return (so_far, usage, "client_closed".into());
                            }
                            Err(_) => {
                                tracing::info!(%request_id, %backend, chunks = so_far.chunks, "client stopped reading the stream; ended");
                                return (so_far, usage, "client_stalled".into());
                            }
                        }
                    }
                }
                Ok(SseEvent::Done) => {
                    if !sent {
                        let _ = tx.send(Bytes::from_static(DONE_FRAME)).await;
                    }
                    attempt.succeed();
                    return (so_far, usage, "done".into());
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
                    return (so_far, usage, failure.describe());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StreamedSoFar;

    #[test]
    fn chunks_give_their_text_and_usage() {
        let mut so_far = StreamedSoFar::default();
        let chunks: &[(&str, Option<(u64, u64)>)] = &[
            (r#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#, None),
            (r#"{"id":"x","choices":[{"index":0,"delta":{"content":"Hello, \"w"}}]}"#, None),
            (r#"{"id":"x","choices":[{"index":0,"text":"orld\u0021"}]}"#, None),
            (r#"{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#, None),
            (r#"{"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#, Some((7, 3))),
            (r#"{"id":"x","choices":null,"usage":{"prompt_tokens":7}}"#, Some((7, 0))),
            ("not json", None),
            (r#"{"error":{"message":"x"}}"#, None),
        ];
        for (chunk, usage) in chunks {
            assert_eq!(so_far.note(chunk.as_bytes()), *usage, "{chunk}");
        }
        assert_eq!(so_far.text, "Hello, \"world!");
        assert_eq!(so_far.chunks, chunks.len() as u32);
    }
}
