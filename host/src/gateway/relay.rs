//! Where a stream is passed to the client: event by event, checked, with an
//! idle limit. A stream that breaks after bytes reached the client is
//! continued from the next target when it can be (`rescue.rs` finds the
//! continuation, `transcript.rs` says what the client has); else it ends
//! with an OpenAI-style error event and no `[DONE]`, so SDKs raise an error
//! instead of taking a cut answer for a whole one. No byte reaches the
//! client twice: a continuation passes only what follows the client's text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::cached::CacheWrite;
use super::framing::Framing;
use super::outcome::EndHooks;
use super::rescue::{Leg, Mode, Rescuer};
use super::transcript::{rewrite, ChunkView, Part, Piece, Transcript};
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use crate::openai::sse::SseEvent;
use crate::telemetry;
use crate::upstream::AttemptFailure;
use crate::upstream::Upstream;
use tracing::Instrument;

/// What the client has received of a stream so far.
#[derive(Debug, Default)]
struct StreamedSoFar {
    /// The pieces received, kept only when the stream may be rescued.
    transcript: Transcript,
    keep: bool,
    /// Chunks passed on.
    chunks: u32,
    /// The stream's id, which continuations keep.
    id: Option<String>,
    /// The first choice finished.
    finished: bool,
    /// A usage chunk was passed on.
    usage_seen: bool,
    /// Choices other than the first were seen (`n` > 1): not rescued.
    other_choices: bool,
}

impl StreamedSoFar {
    /// Whether the answer was complete though the stream did not end well:
    /// it finished, with the usage the client asked for.
    fn complete(&self, include_usage: bool) -> bool {
        self.finished && (self.usage_seen || !include_usage)
    }
}

/// What the current upstream stream has given.
#[derive(Default)]
struct LegCount {
    /// Bytes of pieces received, including those a splice dropped.
    bytes: usize,
    /// Usage the upstream reported.
    usage: Option<(u64, u64)>,
    /// Of its prompt tokens, those read from the backend's prompt cache.
    cached: u64,
    /// Something of it reached the client.
    passed: bool,
}

/// An upstream stream that broke, for the usage the client is given.
struct Broken {
    upstream: Arc<Upstream>,
    usage: Option<(u64, u64)>,
    /// Completion tokens estimated from the bytes it streamed.
    estimate: u64,
}

/// What a chunk comes to.
enum Shaped {
    /// Send this payload; the usage the upstream reported in it.
    Pass(Bytes, Option<(u64, u64)>),
    /// Nothing new for the client.
    Skip,
    /// The upstream stream cannot go on.
    Fail(AttemptFailure),
}

/// A stream ready to be relayed: its first event (already framed for the
/// client), the rest, the attempt it belongs to, and the sender the rest of
/// the response body reads from.
pub(super) struct Relay {
    leg: Leg,
    tx: mpsc::Sender<Bytes>,
    limits: StreamLimits,
    include_usage: bool,
    rescuer: Option<Rescuer>,
    framing: Framing,
    /// Where the stream is kept if it ends cleanly.
    cache: Option<CacheWrite>,
}

/// How long a stream may wait on its client, and run in all.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamLimits {
    /// The client stopped reading this long: the stream ends.
    pub write_timeout: Duration,
    /// The stream has run this long: it ends with an error event.
    pub max_duration: Duration,
}

/// How a stream ended, for logs, traces and the decision log.
struct StreamEnd {
    chunks: u32,
    /// Usage as the client was told (summed over rescues).
    usage: Option<(u64, u64)>,
    /// Prompt tokens of the last upstream read from its prompt cache.
    cached: u64,
    /// `done`, `rescued`, `client_closed`, `client_stalled`, `max_duration`,
    /// or the failure.
    end: String,
    /// Each break and how it was rescued, or not.
    rescues: Vec<Value>,
}

impl Relay {
    /// Prepares relaying; returns the first event's frame, which the response
    /// body starts with (so it leaves with the headers, without waiting for
    /// the relay task), and the receiver of the rest.
    /// `limits` end the stream when the client stops taking it, or when it
    /// has run too long; `rescuer`, when the stream may be rescued, holds
    /// the targets that may continue it.
    /// `framing` is the client's stream format.
    pub(super) fn new(
        leg: Leg,
        limits: StreamLimits,
        include_usage: bool,
        rescuer: Option<Rescuer>,
        mut framing: Framing,
    ) -> (Self, Bytes, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(32);
        let first_frame = match &leg.first {
            SseEvent::Data(chunk) => framing.chunk(chunk, &leg.upstream, true),
            SseEvent::Done => framing.done(),
        };
        (Self { leg, tx, limits, include_usage, rescuer, framing, cache: None }, first_frame, rx)
    }

    /// Keeps the stream in the response cache if it ends cleanly.
    pub(super) fn keep_in(&mut self, cache: Option<CacheWrite>) {
        self.cache = cache;
    }

    /// Starts relaying. `record` is the request's decision-log record, if
    /// any, and whether it is notable: written when the stream ends, with
    /// its tokens and how it ended (a stream that did not end well, or was
    /// rescued, is notable).
    /// `hooks` (the policy's outcome, a canary's window) finish then too:
    /// 200 for a stream that ended well, 499 when the client left, 502 when
    /// it broke.
    pub(super) fn start(self, metrics: Arc<Metrics>, request_id: String, record: Option<(Arc<DecisionLog>, Value, bool)>, hooks: EndHooks) {
        let span = telemetry::stream_span(self.leg.upstream.name());
        // Boxed, and taken apart inside `relay`: the task's future holds the
        // relay's state once, not once per layer, for the stream's whole life.
        let this = Box::new(self);
        tokio::spawn(async move {
            let started = Instant::now();
            let end = this.relay(&metrics, &request_id).instrument(span.clone()).await;
            telemetry::record_stream_end(&span, end.chunks, &end.end);
            let status = match end.end.as_str() {
                "done" | "rescued" => 200,
                "client_closed" | "client_stalled" => 499,
                _ => 502,
            };
            hooks.finish(status, end.usage, end.cached, end.end == "rescued");
            if let Some((log, mut record, notable)) = record {
                record["tokens"] = crate::decision_log::tokens_json(end.usage);
                let notable = notable || end.end != "done";
                record["stream"] = json!({"chunks": end.chunks, "end": end.end, "ms": started.elapsed().as_secs_f64() * 1000.0});
                if !end.rescues.is_empty() {
                    record["stream"]["rescues"] = Value::Array(end.rescues);
                }
                log.write_sampled(record, notable);
            }
        });
    }

    /// Passes events on until the stream ends. Returning drops the upstream
    /// stream and settles its attempt, so the upstream connection and the
    /// backend's in-flight count are free.
    async fn relay(self: Box<Self>, metrics: &Metrics, request_id: &str) -> StreamEnd {
        let Self { leg, tx, limits, include_usage, mut rescuer, mut framing, mut cache } = *self;
        let StreamLimits { write_timeout, max_duration } = limits;
        let ends_at = Instant::now() + max_duration;
        let Leg { mut upstream, attempt, first, mut rest, mut mode } = leg;
        let mut attempt = Some(attempt);
        let mut so_far = StreamedSoFar { keep: rescuer.is_some(), ..Default::default() };
        let mut count = LegCount::default();
        let mut broken: Vec<Broken> = Vec::new();
        let mut rescues: Vec<Value> = Vec::new();
        // The seam's comment, sent before the continuation's first byte,
        // and the break it names.
        let mut seam: Option<String> = None;
        let mut last_break = String::new();
        let end = |so_far: &StreamedSoFar, count: &LegCount, broken: &[Broken], how: &str, rescues| StreamEnd {
            chunks: so_far.chunks,
            usage: client_usage(count, broken),
            cached: count.cached,
            end: how.to_owned(),
            rescues,
        };
        // The first event is in the body already: noted here, not sent.
        let mut next = Some(Ok(first));
        let mut in_body = true;
        loop {
            let idle = Duration::from_millis(upstream.config.stream_idle_timeout_ms);
            let event = match next.take() {
                Some(event) => event,
                None => {
                    in_body = false;
                    let left = ends_at.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(idle.min(left), rest.next()).await {
                        Ok(Some(event)) => event,
                        Ok(None) => Err(AttemptFailure::StreamEnded),
                        // The router's own limit, not the backend's fault: the attempt is released, not failed.
                        Err(_) if left <= idle => {
                            tracing::info!(%request_id, backend = upstream.name(), chunks = so_far.chunks, "stream ended at its maximum duration");
                            let error = json!({"error": {
                                "message": format!("the stream ran for its maximum duration ({} ms) and was ended", max_duration.as_millis()),
                                "type": "server_error",
                                "code": "stream_too_long",
                            }});
                            let _ = tokio::time::timeout(write_timeout, tx.send(framing.error(&error))).await;
                            return end(&so_far, &count, &broken, "max_duration", rescues);
                        }
                        Err(_) => Err(AttemptFailure::Timeout("stream idle")),
                    }
                }
            };
            // `Ok`: the upstream stream ended well; `Err`: it cannot go on.
            let ended = match event {
                Ok(SseEvent::Data(chunk)) => match shape(&chunk, &mut mode, &mut so_far, &mut count, &broken) {
                    Shaped::Pass(payload, usage) => {
                        so_far.chunks += 1;
                        count.passed = true;
                        if let Some(write) = cache.as_mut() {
                            write.push(&payload, matches!(mode, Mode::Original));
                        }
                        if let Some((input, output)) = usage {
                            metrics.tokens(upstream.name(), input, output, upstream.config.cost_usd(input, output, count.cached));
                        }
                        if in_body {
                            continue;
                        }
                        let framed = framing.chunk(&payload, &upstream, matches!(mode, Mode::Original));
                        if framed.is_empty() {
                            continue;
                        }
                        let seam = seam.take().map(Bytes::from);
                        let sent = match seam {
                            Some(seam) => match send(&tx, seam, write_timeout).await {
                                Ok(()) => send(&tx, framed, write_timeout).await,
                                Err(how) => Err(how),
                            },
                            None => send(&tx, framed, write_timeout).await,
                        };
                        if let Err(gone) = sent {
                            tracing::info!(%request_id, backend = upstream.name(), chunks = so_far.chunks, "{}", gone.describe());
                            return end(&so_far, &count, &broken, gone.as_str(), rescues);
                        }
                        continue;
                    }
                    Shaped::Skip => continue,
                    Shaped::Fail(failure) => Err(failure),
                },
                Ok(SseEvent::Done) => match &mode {
                    Mode::Splice(splicer) if !splicer.covered() => {
                        Err(AttemptFailure::Diverged("it ended before reaching the end of the client's text".into()))
                    }
                    _ => Ok(()),
                },
                Err(failure) => Err(failure),
            };
            let backend = upstream.name().to_owned();
            let failure = match ended {
                Err(failure) if !so_far.complete(include_usage) || matches!(failure, AttemptFailure::Diverged(_)) => failure,
                // Ended well, or every chunk and the usage asked for arrived:
                // a missing end is then the upstream's slip, not a lost answer.
                ended => {
                    if let Err(failure) = &ended {
                        tracing::warn!(%request_id, %backend, "the stream's answer was complete but it {}; finished it", failure.describe());
                        metrics.unterminated_stream(&backend);
                    }
                    let done = framing.done();
                    if !in_body && !done.is_empty() {
                        let _ = send(&tx, done, write_timeout).await;
                    }
                    if let Some(attempt) = attempt.take() {
                        attempt.succeed();
                    }
                    let how = if matches!(mode, Mode::Original) { "done" } else { "rescued" };
                    if let Some(write) = cache.take().filter(|_| how == "done" && ended.is_ok()) {
                        write.finish(upstream.name());
                    }
                    settle_rescue(metrics, &upstream, &mode, &mut rescues, "rescued");
                    account_broken(metrics, &broken, count.usage);
                    return end(&so_far, &count, &broken, how, rescues);
                }
            };
            tracing::warn!(%request_id, %backend, mode = mode.name(), chunks = so_far.chunks, bytes = so_far.transcript.bytes(), "stream failed after it started: {}", failure.describe());
            if let Some(attempt) = attempt.take() {
                if failure.counts_against_backend() {
                    attempt.fail();
                }
            }
            if matches!(mode, Mode::Original) {
                metrics.stream_failure(&backend);
                rescues.push(json!({"broke": backend, "after_chunks": so_far.chunks, "failure": failure.describe(), "tries": []}));
            } else {
                let outcome = if matches!(failure, AttemptFailure::Diverged(_)) { "diverged" } else { "broke" };
                settle_rescue(metrics, &upstream, &mode, &mut rescues, &failure.describe());
                metrics.rescue(&backend, mode.name(), outcome);
                if count.passed {
                    // A continuation that reached the client and broke is a new break.
                    rescues.push(json!({"broke": backend, "after_chunks": so_far.chunks, "failure": failure.describe(), "tries": []}));
                }
            }
            broken.push(Broken { upstream: upstream.clone(), usage: count.usage, estimate: (count.bytes as u64).div_ceil(4) });
            if count.passed || matches!(mode, Mode::Original) {
                // The break the client would see: what the seam comment names.
                last_break = format!("`{backend}` {}", failure.describe().replace(['\r', '\n'], " "));
            }

            let mut tries = Vec::new();
            let continuation = match rescuer.as_mut() {
                None => None,
                Some(_) if so_far.other_choices => {
                    tries.push(json!({"skipped": "the stream has several choices (n > 1)"}));
                    None
                }
                // Boxed: a rescue's upstream call is large and rare, and the
                // relay's future lives as long as every stream.
                Some(rescuer) => {
                    Box::pin(rescuer.rescue(&so_far.transcript, count.passed || matches!(mode, Mode::Original), &mut tries)).await
                }
            };
            if let Some(Value::Array(all)) = rescues.last_mut().map(|r| &mut r["tries"]) {
                all.extend(tries);
            }
            let Some(leg) = continuation else {
                account_broken(metrics, &broken, None);
                let message = interrupted_message(&rescues);
                tracing::warn!(%request_id, "stream not rescued: {message}");
                let error = json!({"error": {"message": message, "type": "upstream_error", "code": "stream_interrupted"}});
                let _ = send(&tx, framing.error(&error), write_timeout).await;
                return end(&so_far, &count, &broken, &failure.describe(), rescues);
            };
            seam = Some(format!(": rescued: {last_break}; continued on `{}` by {}\n\n", leg.upstream.name(), leg.mode.name()));
            tracing::info!(%request_id, from = %backend, to = leg.upstream.name(), mode = leg.mode.name(), "stream continued");
            (upstream, attempt, rest, mode) = (leg.upstream, Some(leg.attempt), leg.rest, leg.mode);
            count = LegCount::default();
            next = Some(Ok(leg.first));
        }
    }
}

/// How a client ended its stream (not the backend's fault).
#[derive(Debug, Clone, Copy)]
enum ClientGone {
    /// It closed the connection.
    Closed,
    /// It stopped reading for `stream_write_timeout_ms`.
    Stalled,
}

impl ClientGone {
    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "client_closed",
            Self::Stalled => "client_stalled",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Closed => "client closed the stream",
            Self::Stalled => "client stopped reading the stream; ended",
        }
    }
}

/// Sends `bytes` to the client, waiting at most `write_timeout`.
async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes, write_timeout: Duration) -> Result<(), ClientGone> {
    match tokio::time::timeout(write_timeout, tx.send(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ClientGone::Closed),
        Err(_) => Err(ClientGone::Stalled),
    }
}

/// Reads a chunk of the current upstream stream and says what the client
/// gets of it. The first stream's chunks pass as they are; a
/// continuation's are rewritten to the stream's id and to what is new.
fn shape(chunk: &Bytes, mode: &mut Mode, so_far: &mut StreamedSoFar, count: &mut LegCount, broken: &[Broken]) -> Shaped {
    let Some(view) = ChunkView::read(chunk) else {
        return match mode {
            Mode::Original => Shaped::Pass(chunk.clone(), None),
            _ => Shaped::Fail(AttemptFailure::Protocol("a chunk that is not a JSON object".into())),
        };
    };
    if let Some(message) = view.error() {
        return Shaped::Fail(AttemptFailure::ErrorEvent(message));
    }
    so_far.other_choices |= view.other_choices();
    let usage = view.usage();
    if usage.is_some() {
        count.usage = usage;
        count.cached = view.cached_tokens();
    }
    if let Mode::Original = mode {
        if so_far.id.is_none() {
            so_far.id = view.id().map(str::to_owned);
        }
        for (part, text) in view.pieces() {
            count.bytes += text.len();
            if so_far.keep {
                so_far.transcript.push(part, &text);
            }
        }
        so_far.finished |= view.finished();
        so_far.usage_seen |= usage.is_some();
        return Shaped::Pass(chunk.clone(), usage);
    }
    let mut kept = Vec::new();
    for (part, text) in view.pieces() {
        count.bytes += text.len();
        let new = match mode {
            Mode::Prefill { trim_start } => {
                if *trim_start && part == Part::Content {
                    let trimmed = text.trim_start();
                    *trim_start = trimmed.is_empty();
                    trimmed
                } else {
                    *trim_start = false;
                    text.as_ref()
                }
            }
            Mode::Splice(splicer) => match splicer.take(part, &text) {
                Ok(new) => new,
                Err(why) => return Shaped::Fail(AttemptFailure::Diverged(why)),
            },
            Mode::Original => text.as_ref(),
        };
        if !new.is_empty() {
            so_far.transcript.push(part, new);
            kept.push(Piece { part, text: new.to_owned() });
        }
    }
    if view.finished() {
        if let Mode::Splice(splicer) = mode {
            if !splicer.covered() {
                return Shaped::Fail(AttemptFailure::Diverged("it finished before reaching the end of the client's text".into()));
            }
        }
        so_far.finished = true;
    }
    so_far.usage_seen |= usage.is_some();
    let told = usage.map(|(prompt, completion)| summed(prompt, completion, broken));
    match rewrite(chunk, so_far.id.as_deref(), &kept, told) {
        Some(payload) => Shaped::Pass(Bytes::from(payload), usage),
        None => Shaped::Skip,
    }
}

/// The usage the client is told: the last upstream's, plus each broken
/// one's (as reported, or its prompt as the last one's and its completion
/// estimated from what it streamed).
fn summed(prompt: u64, completion: u64, broken: &[Broken]) -> (u64, u64) {
    broken.iter().fold((prompt, completion), |(p, c), b| match b.usage {
        Some((bp, bc)) => (p + bp, c + bc),
        None => (p + prompt, c + b.estimate),
    })
}

/// The usage of the whole stream, when the last upstream reported one.
fn client_usage(count: &LegCount, broken: &[Broken]) -> Option<(u64, u64)> {
    let (prompt, completion) = count.usage?;
    Some(summed(prompt, completion, broken))
}

/// Counts the estimated tokens of broken upstream streams that reported
/// none, against their backends, with the prompt as `last` reported it.
fn account_broken(metrics: &Metrics, broken: &[Broken], last: Option<(u64, u64)>) {
    for b in broken.iter().filter(|b| b.usage.is_none()) {
        let prompt = last.map_or(0, |(p, _)| p);
        metrics.tokens(b.upstream.name(), prompt, b.estimate, b.upstream.config.cost_usd(prompt, b.estimate, 0));
    }
}

/// Marks the last rescue try `started` on `upstream` with its outcome, and
/// counts a rescue that completed.
fn settle_rescue(metrics: &Metrics, upstream: &Upstream, mode: &Mode, rescues: &mut [Value], outcome: &str) {
    if matches!(mode, Mode::Original) {
        return;
    }
    if outcome == "rescued" {
        metrics.rescue(upstream.name(), mode.name(), "rescued");
    }
    let tries = rescues.last_mut().and_then(|r| r["tries"].as_array_mut());
    if let Some(try_) = tries.and_then(|t| t.iter_mut().rev().find(|t| t["outcome"] == "started" && t["backend"] == upstream.name())) {
        try_["outcome"] = json!(outcome);
    }
}

/// The client's error when a stream could not be rescued: the original
/// break and each rescue try.
fn interrupted_message(rescues: &[Value]) -> String {
    let mut parts = Vec::new();
    for r in rescues {
        parts.push(format!(
            "the upstream stream from backend `{}` failed after {} chunks: {}",
            r["broke"].as_str().unwrap_or_default(),
            r["after_chunks"],
            r["failure"].as_str().unwrap_or_default()
        ));
        for t in r["tries"].as_array().into_iter().flatten() {
            parts.push(match (t["backend"].as_str(), t["skipped"].as_str()) {
                (Some(b), Some(why)) => format!("rescue on `{b}` skipped: {why}"),
                (None, Some(why)) => format!("no rescue: {why}"),
                (Some(b), None) => {
                    format!("rescue on `{b}` by {}: {}", t["mode"].as_str().unwrap_or_default(), t["outcome"].as_str().unwrap_or_default())
                }
                (None, None) => continue,
            });
        }
    }
    if rescues.iter().all(|r| r["tries"].as_array().is_none_or(Vec::is_empty)) {
        parts.push("no other target to continue it".into());
    }
    parts.join("; ")
}
