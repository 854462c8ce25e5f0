//! The HTTP client of one backend: hyper-util's pooled client over rustls,
//! and the answer's body read under a cap or as a stream.
//!
//! Not reqwest: on every request it runs a redirect policy and a retry
//! policy (each parsing the URL again), clones its client and connector,
//! and parses the URL once more for the response. A bare proxy spends 28 µs
//! of CPU a request through reqwest at 64 connections on the bench machine
//! and 20 µs through this client (`bench/results.md`, 2026-12-03).

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::failure::{redirected, retry_after, AttemptFailure};
use crate::config::BackendConfig;

/// Most bytes of an upstream error body kept.
pub(super) const MAX_ERROR_BODY: usize = 64 << 10;

/// An upstream's answer whose status was 2xx.
pub(super) type Answered = Response<Incoming>;

/// Pooled keep-alive connections to one backend: TCP_NODELAY, rustls with
/// the webpki roots, HTTP/2 when TLS negotiates it (or always, `h2c`).
pub(super) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// The client for `config`'s backend.
    pub(super) fn new(config: &BackendConfig) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        // The TLS layer takes `https` URLs; this one only dials.
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            // An HTTP/2 connection (h2c, or an https upstream's choice) carries
            // many requests: a dead one is found by ping, not by each stream's
            // idle limit.
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(20))
            .http2_keep_alive_timeout(Duration::from_secs(10));
        // h2c: every request in flight shares one connection.
        builder.http2_only(config.h2c);
        Ok(Self { client: builder.build(connector) })
    }

    /// Posts `body` (JSON) to `uri` with `headers`. A 2xx answer is returned
    /// to be read; anything else is the attempt's failure (a 3xx is never
    /// followed, see [`redirected`]).
    pub(super) async fn post(&self, uri: &Uri, mut headers: HeaderMap, body: Bytes) -> Result<Answered, AttemptFailure> {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(trace) = crate::telemetry::upstream_headers() {
            headers.extend(trace);
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers;
        let response = self.client.request(request).await.map_err(|e| {
            let failure = failed_on_the_way(&e);
            match failure {
                AttemptFailure::Connect(_) if e.is_connect() && timed_out(&e) => AttemptFailure::Timeout("connection"),
                other => other,
            }
        })?;
        let status = response.status();
        if status.is_redirection() {
            return Err(redirected(status.as_u16()));
        }
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let body = read_capped(response, MAX_ERROR_BODY).await.unwrap_or_default();
            return Err(AttemptFailure::Status { status: status.as_u16(), retry_after, body });
        }
        Ok(response)
    }
}

/// `base` (no trailing slash) and `path` as a request URI.
pub(super) fn endpoint(base: &str, path: &str) -> Result<Uri, String> {
    let text = format!("{base}{path}");
    let uri: Uri = text.parse().map_err(|e| format!("base_url: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(format!("base_url: `{text}` is not an http:// or https:// URL")),
    }
}

/// The body of `response`, or a failure once it passes `cap` bytes. Copied
/// out of hyper's read buffers: a cached answer must not hold one.
pub(super) async fn read_capped(response: Answered, cap: usize) -> Result<Bytes, AttemptFailure> {
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| failed_on_the_way(&e))?;
        let Ok(chunk) = frame.into_data() else { continue };
        if out.len() + chunk.len() > cap {
            return Err(AttemptFailure::Protocol(format!("the answer is larger than {cap} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// The body of `response` as it comes.
pub(super) fn body_stream(response: Answered) -> BoxStream<'static, Result<Bytes, AttemptFailure>> {
    BodyDataStream::new(response.into_body()).map(|chunk| chunk.map_err(|e| failed_on_the_way(&e))).boxed()
}

/// A failure between the router and the upstream: no connection, or one
/// that broke. The error chain names no URL or address (hyper's errors do
/// not carry them): errors reach clients, and a backend's address is the
/// operator's business.
fn failed_on_the_way(e: &(dyn std::error::Error + 'static)) -> AttemptFailure {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    AttemptFailure::Connect(chain)
}

/// Whether an I/O error in `e`'s chain timed out (`connect_timeout_ms`).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(cause) = source {
        if cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        source = cause.source();
    }
    false
}
