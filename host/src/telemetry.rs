//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when
//! `[telemetry] otlp_endpoint` is set; off otherwise, and then nothing here
//! costs more than a flag check on the request path.
//!
//! Spans (target `switchyard::trace`): `request` (server) per client
//! request, with `policy.decide` and one `upstream.attempt` (client) per
//! upstream call under it, and `stream.relay` for a stream's body. A
//! caller's W3C `traceparent` is the request's parent; each upstream call
//! carries a `traceparent` of its attempt span, so traces continue through
//! the providers that read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HeaderExtractor, HeaderInjector, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;

/// The tracing target of every exported span.
pub const TARGET: &str = "switchyard::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Owns the exporter; [`Telemetry::shutdown`] sends what is still queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Starts exporting to `config.otlp_endpoint` (none: `Ok(None)`). The
    /// exporter's HTTP calls run on `runtime`; the batch processor has a
    /// thread of its own.
    pub fn start(config: &TelemetryConfig, runtime: tokio::runtime::Handle) -> Result<Option<(Self, Tracer)>, String> {
        let Some(endpoint) = &config.otlp_endpoint else { return Ok(None) };
        let client = ExportClient { http: reqwest::Client::new(), runtime };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
            .with_resource(Resource::builder().with_service_name(config.service_name.clone()).build())
            .build();
        let tracer = provider.tracer("switchyard");
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some((Self { provider }, tracer)))
    }

    /// Exports what is queued and stops. Blocks: call it off the async
    /// workers.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("trace export did not finish: {e}");
        }
    }
}

/// The span of one client request; its parent is the caller's
/// `traceparent`, when it sent one.
pub fn request_span(request_id: &str, method: &str, path: &str, headers: &hyper::HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET, "request",
        otel.kind = "server", otel.status_code = tracing::field::Empty,
        http.request.method = method, url.path = path, request_id,
        gen_ai.request.model = tracing::field::Empty, gen_ai.response.model = tracing::field::Empty,
        switchyard.policy = tracing::field::Empty, switchyard.backend = tracing::field::Empty,
        switchyard.attempts = tracing::field::Empty, http.response.status_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    span
}

/// Records what the request came to on `span`.
pub fn record_request(span: &Span, model: &str, policy: &str, backend: Option<&str>, answered_by: Option<&str>, attempts: u32) {
    if span.is_none() {
        return;
    }
    span.record("gen_ai.request.model", model);
    span.record("switchyard.policy", policy);
    span.record("switchyard.attempts", attempts);
    if let Some(backend) = backend {
        span.record("switchyard.backend", backend);
    }
    if let Some(model) = answered_by {
        span.record("gen_ai.response.model", model);
    }
}

/// Records the response status on a request span.
pub fn record_status(span: &Span, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of a policy call.
pub fn decide_span(policy: &str, version: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, "policy.decide", switchyard.policy = policy, switchyard.policy_version = version)
}

/// The span of one upstream call.
pub fn attempt_span(backend: &str, model: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET, "upstream.attempt",
        otel.kind = "client", otel.status_code = tracing::field::Empty,
        switchyard.backend = backend, gen_ai.request.model = model, switchyard.outcome = tracing::field::Empty,
    )
}

/// Records an attempt's outcome (`ok`, or a failure's name).
pub fn record_outcome(span: &Span, outcome: &str) {
    if span.is_none() {
        return;
    }
    span.record("switchyard.outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of a stream's body, after its first event.
pub fn stream_span(backend: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET, "stream.relay",
        switchyard.backend = backend, switchyard.chunks = tracing::field::Empty, switchyard.end = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records how a stream ended on its span.
pub fn record_stream_end(span: &Span, chunks: u32, end: &str) {
    if span.is_none() {
        return;
    }
    span.record("switchyard.chunks", chunks);
    span.record("switchyard.end", end);
    if end != "done" && end != "client_closed" {
        span.record("otel.status_code", "ERROR");
    }
}

/// `traceparent` (and `tracestate`) for an upstream call made inside the
/// current span; `None` when tracing is off.
pub fn upstream_headers() -> Option<hyper::HeaderMap> {
    if !enabled() {
        return None;
    }
    let mut headers = hyper::HeaderMap::new();
    TraceContextPropagator::new().inject_context(&Span::current().context(), &mut HeaderInjector(&mut headers));
    Some(headers)
}

/// Sends the exporter's batches with our reqwest client, on the server's
/// runtime (the batch processor's own thread has none).
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let (status, headers, body) = self
            .runtime
            .spawn(async move {
                let response = http.execute(request).await?;
                let (status, headers) = (response.status(), response.headers().clone());
                Ok::<_, reqwest::Error>((status, headers, response.bytes().await?))
            })
            .await??;
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}
