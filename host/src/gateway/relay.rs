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

use super::cached::CacheWrite;
use super::framing::Framing;
use super::outcome::EndHooks;
use super::rescue::{Leg, Mode, Rescuer};
use super::stream_body::{Outbox, RelayBody, StallWatch};
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
/// client), the rest, and the attempt it belongs to.
pub(super) struct Relay {
    leg: Leg,
    first_frame: Bytes,
    limits: StreamLimits,
    include_usage: bool,
    rescuer: Option<Rescuer>,
    framing: Framing,
    /// Where the stream is kept if it ends cleanly (boxed: most routes
    /// have no cache, and the relay lives as long as the stream).
    cache: Option<Box<CacheWrite>>,
}

/// How long a stream may wait on its client, and run in all.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamLimits {
    /// The client stopped reading this long: the stream ends.
    pub write_timeout: Duration,
    /// The stream has run this long: it ends with an error event.
    pub max_duration: Duration,
}

/// What a stream has done so far: what its end reports.
#[derive(Default)]
struct Progress {
    so_far: StreamedSoFar,
    /// The current upstream's part.
    count: LegCount,
    /// Upstreams that broke.
    broken: Vec<Broken>,
    /// Each break and how it was rescued, or not.
    rescues: Vec<Value>,
}

/// What runs when a stream ends: its trace, end hooks and decision-log
/// record. Run on drop too, when the client closed or stalled and the
/// relay was dropped mid-way.
struct Ending {
    metrics: Arc<Metrics>,
    request_id: String,
    backend: String,
    record: Option<(Arc<DecisionLog>, Value, bool)>,
    /// Taken when the end has run.
    hooks: Option<EndHooks>,
    span: tracing::Span,
    started: Instant,
    outbox: Arc<Outbox>,
    progress: Progress,
}

impl Ending {
    /// `how`: `done`, `rescued`, `client_closed`, `client_stalled`,
    /// `max_duration`, or the failure.
    fn finish(&mut self, how: &str) {
        let Some(hooks) = self.hooks.take() else { return };
        let p = &mut self.progress;
        let (chunks, usage, cached) = (p.so_far.chunks, client_usage(&p.count, &p.broken), p.count.cached);
        telemetry::record_stream_end(&self.span, chunks, how);
        let status = match how {
            "done" | "rescued" => 200,
            "client_closed" | "client_stalled" => 499,
            _ => 502,
        };
        hooks.finish(status, usage, cached, how == "rescued");
        if let Some((log, mut record, notable)) = self.record.take() {
            record["tokens"] = crate::decision_log::tokens_json(usage);
            let notable = notable || how != "done";
            record["stream"] = json!({"chunks": chunks, "end": how, "ms": self.started.elapsed().as_secs_f64() * 1000.0});
            if !p.rescues.is_empty() {
                record["stream"]["rescues"] = Value::Array(std::mem::take(&mut p.rescues));
            }
            log.write_sampled(record, notable);
        }
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        if self.hooks.is_none() {
            return;
        }
        let gone = if self.outbox.stalled() { ClientGone::Stalled } else { ClientGone::Closed };
        let chunks = self.progress.so_far.chunks;
        tracing::info!(request_id = %self.request_id, backend = %self.backend, chunks, "{}", gone.describe());
        self.finish(gone.as_str());
    }
}

impl Relay {
    /// Prepares relaying. The response body starts with the first event's
    /// frame, so it leaves with the headers.
    /// `limits` end the stream when the client stops taking it, or when it
    /// has run too long; `rescuer`, when the stream may be rescued, holds
    /// the targets that may continue it.
    /// `framing` is the client's stream format.
    pub(super) fn new(leg: Leg, limits: StreamLimits, include_usage: bool, rescuer: Option<Rescuer>, mut framing: Framing) -> Self {
        let first_frame = match &leg.first {
            SseEvent::Data(chunk) => framing.chunk(chunk, &leg.upstream, true),
            SseEvent::Done => framing.done(),
        };
        Self { leg, first_frame, limits, include_usage, rescuer, framing, cache: None }
    }

    /// Keeps the stream in the response cache if it ends cleanly.
    pub(super) fn keep_in(&mut self, cache: Option<CacheWrite>) {
        self.cache = cache.map(Box::new);
    }

    /// The stream's response body: relaying runs as hyper polls it.
    /// `record` is the request's decision-log record, if any, and whether it
    /// is notable: written when the stream ends, with its tokens and how it
    /// ended (a stream that did not end well, or was rescued, is notable).
    /// `hooks` (the policy's outcome, a canary's window) finish then too:
    /// 200 for a stream that ended well, 499 when the client left, 502 when
    /// it broke. `stalls` ends the stream if its client stops reading.
    pub(super) fn start(
        mut self,
        stalls: &Arc<StallWatch>,
        metrics: Arc<Metrics>,
        request_id: String,
        record: Option<(Arc<DecisionLog>, Value, bool)>,
        hooks: EndHooks,
    ) -> RelayBody {
        let span = telemetry::stream_span(self.leg.upstream.name());
        let outbox = Arc::new(Outbox::default());
        let first = std::mem::take(&mut self.first_frame);
        let write_timeout = self.limits.write_timeout;
        let mut ending = Ending {
            metrics,
            request_id,
            backend: self.leg.upstream.name().to_owned(),
            record,
            hooks: Some(hooks),
            span: span.clone(),
            started: Instant::now(),
            outbox: outbox.clone(),
            progress: Progress { so_far: StreamedSoFar { keep: self.rescuer.is_some(), ..Default::default() }, ..Default::default() },
        };
        // Boxed, and taken apart inside `relay`: the future holds the
        // relay's state once, not once per layer, for the stream's whole life.
        let this = Box::new(self);
        let relaying = async move {
            let Ending { metrics, request_id, outbox, progress, .. } = &mut ending;
            let how = this.relay(progress, metrics, request_id, outbox).instrument(span).await;
            ending.finish(&how);
        };
        stalls.body(first, write_timeout, outbox, Box::pin(relaying))
    }

    /// Passes events on until the stream ends; says how it ended. Returning
    /// drops the upstream stream and settles its attempt, so the upstream
    /// connection and the backend's in-flight count are free.
    async fn relay(self: Box<Self>, p: &mut Progress, metrics: &Metrics, request_id: &str, outbox: &Outbox) -> String {
        let Self { leg, limits, include_usage, mut rescuer, mut framing, mut cache, .. } = *self;
        let ends_at = Instant::now() + limits.max_duration;
        let Leg { mut upstream, attempt, first, mut rest, mut mode } = leg;
        let mut attempt = Some(attempt);
        // The seam's comment, sent before the continuation's first byte,
        // and the break it names.
        let mut seam: Option<String> = None;
        let mut last_break = String::new();
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
                            tracing::info!(%request_id, backend = upstream.name(), chunks = p.so_far.chunks, "stream ended at its maximum duration");
                            let error = json!({"error": {
                                "message": format!("the stream ran for its maximum duration ({} ms) and was ended", limits.max_duration.as_millis()),
                                "type": "server_error",
                                "code": "stream_too_long",
                            }});
                            outbox.send(framing.error(&error)).await;
                            return "max_duration".into();
                        }
                        Err(_) => Err(AttemptFailure::Timeout("stream idle")),
                    }
                }
            };
            // `Ok`: the upstream stream ended well; `Err`: it cannot go on.
            let ended = match event {
                Ok(SseEvent::Data(chunk)) => match shape(&chunk, &mut mode, &mut p.so_far, &mut p.count, &p.broken) {
                    Shaped::Pass(payload, usage) => {
                        p.so_far.chunks += 1;
                        p.count.passed = true;
                        if let Some(write) = cache.as_mut() {
                            write.push(&payload, matches!(mode, Mode::Original));
                        }
                        if let Some((input, output)) = usage {
                            metrics.tokens(upstream.name(), input, output, upstream.config.cost_usd(input, output, p.count.cached));
                        }
                        if in_body {
                            continue;
                        }
                        let framed = framing.chunk(&payload, &upstream, matches!(mode, Mode::Original));
                        if framed.is_empty() {
                            continue;
                        }
                        if let Some(seam) = seam.take() {
                            outbox.send(Bytes::from(seam)).await;
                        }
                        outbox.send(framed).await;
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
                Err(failure) if !p.so_far.complete(include_usage) || matches!(failure, AttemptFailure::Diverged(_)) => failure,
                // Ended well, or every chunk and the usage asked for arrived:
                // a missing end is then the upstream's slip, not a lost answer.
                ended => {
                    if let Err(failure) = &ended {
                        tracing::warn!(%request_id, %backend, "the stream's answer was complete but it {}; finished it", failure.describe());
                        metrics.unterminated_stream(&backend);
                    }
                    let done = framing.done();
                    if !in_body && !done.is_empty() {
                        outbox.send(done).await;
                    }
                    if let Some(attempt) = attempt.take() {
                        attempt.succeed();
                    }
                    let how = if matches!(mode, Mode::Original) { "done" } else { "rescued" };
                    if let Some(write) = cache.take().filter(|_| how == "done" && ended.is_ok()) {
                        (*write).finish(upstream.name());
                    }
                    settle_rescue(metrics, &upstream, &mode, &mut p.rescues, "rescued");
                    account_broken(metrics, &p.broken, p.count.usage);
                    return how.into();
                }
            };
            tracing::warn!(%request_id, %backend, mode = mode.name(), chunks = p.so_far.chunks, bytes = p.so_far.transcript.bytes(), "stream failed after it started: {}", failure.describe());
            if let Some(attempt) = attempt.take() {
                if failure.counts_against_backend() {
                    attempt.fail();
                }
            }
            if matches!(mode, Mode::Original) {
                metrics.stream_failure(&backend);
                p.rescues.push(json!({"broke": backend, "after_chunks": p.so_far.chunks, "failure": failure.describe(), "tries": []}));
            } else {
                let outcome = if matches!(failure, AttemptFailure::Diverged(_)) { "diverged" } else { "broke" };
                settle_rescue(metrics, &upstream, &mode, &mut p.rescues, &failure.describe());
                metrics.rescue(&backend, mode.name(), outcome);
                if p.count.passed {
                    // A continuation that reached the client and broke is a new break.
                    p.rescues.push(json!({"broke": backend, "after_chunks": p.so_far.chunks, "failure": failure.describe(), "tries": []}));
                }
            }
            p.broken.push(Broken { upstream: upstream.clone(), usage: p.count.usage, estimate: (p.count.bytes as u64).div_ceil(4) });
            if p.count.passed || matches!(mode, Mode::Original) {
                // The break the client would see: what the seam comment names.
                last_break = format!("`{backend}` {}", failure.describe().replace(['\r', '\n'], " "));
            }

            let mut tries = Vec::new();
            let continuation = match rescuer.as_mut() {
                None => None,
                Some(_) if p.so_far.other_choices => {
                    tries.push(json!({"skipped": "the stream has several choices (n > 1)"}));
                    None
                }
                // Boxed: a rescue's upstream call is large and rare, and the
                // relay's future lives as long as every stream.
                Some(rescuer) => {
                    Box::pin(rescuer.rescue(&p.so_far.transcript, p.count.passed || matches!(mode, Mode::Original), &mut tries)).await
                }
            };
            if let Some(Value::Array(all)) = p.rescues.last_mut().map(|r| &mut r["tries"]) {
                all.extend(tries);
            }
            let Some(leg) = continuation else {
                account_broken(metrics, &p.broken, None);
                let message = interrupted_message(&p.rescues);
                tracing::warn!(%request_id, "stream not rescued: {message}");
                let error = json!({"error": {"message": message, "type": "upstream_error", "code": "stream_interrupted"}});
                outbox.send(framing.error(&error)).await;
                return failure.describe();
            };
            seam = Some(format!(": rescued: {last_break}; continued on `{}` by {}\n\n", leg.upstream.name(), leg.mode.name()));
            tracing::info!(%request_id, from = %backend, to = leg.upstream.name(), mode = leg.mode.name(), "stream continued");
            (upstream, attempt, rest, mode) = (leg.upstream, Some(leg.attempt), leg.rest, leg.mode);
            p.count = LegCount::default();
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
