//! The HTTP listener: HTTP/1.1 and HTTP/2 (h2c) on one port, TCP_NODELAY,
//! header limits, bounded connections and first bytes, idle connections
//! closed, and graceful shutdown that lets requests and streams in flight
//! finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use hyper::body::Incoming;
use hyper::{Request, Response};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::gateway::http::Body;

/// What one listener allows a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most request headers.
    pub max_headers: usize,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Time from accepting a connection to its first byte (the HTTP/1 or
    /// HTTP/2 sniff), and then to a request's complete headers.
    pub header_timeout: Duration,
    /// HTTP/2: a ping after this long without frames, and the connection
    /// closed when its answer takes as long (a peer that went away).
    pub http2_keepalive: Duration,
    /// A connection with no request in flight this long is closed gracefully
    /// (an HTTP/2 peer that answers pings but sends nothing would otherwise
    /// hold its slot for ever).
    pub idle_timeout: Duration,
}

/// Serves `handler` on `listener` until `shutdown` resolves, then waits up to
/// `grace` for connections in flight.
pub async fn serve<H, F>(listener: TcpListener, handler: H, limits: Limits, shutdown: impl Future<Output = ()>, grace: Duration)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_headers(limits.max_headers).header_read_timeout(limits.header_timeout).timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .max_header_list_size(64 << 10)
        .keep_alive_interval(limits.http2_keepalive)
        .keep_alive_timeout(limits.http2_keepalive)
        .timer(hyper_util::rt::TokioTimer::new());
    // The protocol is told apart before hyper reads (`sniff`), so each
    // connection gets a builder for one protocol.
    let builders = Arc::new(Builders { http1: builder.clone().http1_only(), http2: builder.http2_only() });
    let _heartbeat = AbortOnDrop(tokio::spawn(timer_heartbeat()));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Tells every connection to finish its requests and close.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let activity = Arc::new(Activity::new());
                let seen = activity.clone();
                let service = service_fn(move |request| {
                    let guard = seen.start();
                    // Boxed: hyper keeps a slot the size of this future in
                    // every connection, idle or streaming, for its whole life;
                    // the handler's future (kilobytes) lives only while it runs.
                    let response = Box::pin(handler(request));
                    async move { Ok::<_, std::convert::Infallible>(response.await.map(|body| Tracked { body, _guard: guard }.boxed_unsync())) }
                });
                let mut stopping = stopping.clone();
                let builders = builders.clone();
                tokio::spawn(async move {
                    let protocol = tokio::select! {
                        // Silent past the header timeout, or closed before a byte: no connection.
                        sniffed = tokio::time::timeout(limits.header_timeout, sniff(&stream)) => sniffed.ok().and_then(Result::ok),
                        // The server stops: a connection that has sent nothing is closed.
                        _ = stopping.changed() => None,
                    };
                    if let Some(protocol) = protocol {
                        let io = TokioIo::new(stream);
                        let builder = match protocol {
                            Protocol::Http1 => &builders.http1,
                            Protocol::Http2 => &builders.http2,
                        };
                        // Boxed once: the task's future then holds a pointer, not
                        // copies of hyper's connection state for as long as it lives.
                        let connection = Box::pin(builder.serve_connection(io, service).into_owned());
                        let driven = drive(connection, activity.clone(), limits.idle_timeout, stopping);
                        // hyper runs an HTTP/1 request's handler inside this
                        // task (an HTTP/2 stream's in a task of its own).
                        let ended = match protocol {
                            Protocol::Http1 => HTTP1_CONNECTION.scope(activity, driven).await,
                            Protocol::Http2 => driven.await,
                        };
                        if let Err(e) = ended {
                            tracing::debug!("connection ended with an error: {e}");
                        }
                    }
                    drop(slot);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting up to {grace:?} for requests in flight");
    let _ = stop.send(true);
    // Every connection holds a slot until it has closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// How soon the server's heartbeat timer is always due.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`HEARTBEAT`] while the server runs. tokio wakes
/// its time driver (an eventfd write, and a parked worker woken for nothing)
/// whenever a timer is set that falls due before every other one: without a
/// near timer, that was most requests' header or body deadline.
async fn timer_heartbeat() {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Aborts its task when dropped (the server's future may be dropped mid-way).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a connection until it closes: gracefully once it has been idle for
/// `idle`, or when the server stops.
async fn drive<C: GracefulConnection>(
    mut connection: Pin<Box<C>>,
    activity: Arc<Activity>,
    idle: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), C::Error> {
    let mut closing = false;
    loop {
        let quiet_until = activity.quiet_until(idle);
        tokio::select! {
            result = connection.as_mut() => return result,
            // Dropped, not shut down: a graceful end would wait on the writes
            // of a client that stopped reading.
            () = activity.close.notified() => {
                tracing::debug!("closing a connection whose client stopped reading");
                return Ok(());
            }
            changed = stopping.changed(), if !closing => {
                if changed.is_err() || *stopping.borrow() {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            () = tokio::time::sleep_until(quiet_until), if !closing => {
                if activity.idle_for(idle) {
                    tracing::debug!("closing a connection idle for {idle:?}");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

tokio::task_local! {
    /// The HTTP/1 connection whose task is running.
    static HTTP1_CONNECTION: Arc<Activity>;
}

/// Closes the HTTP/1 connection a response is being written on. A stream
/// whose client stopped reading is ended by the gateway, but hyper, blocked
/// writing to that client, would keep the connection (its buffers and
/// slot) until the client read again; over HTTP/2 the stream is reset and
/// the connection serves on, so there is no closer.
pub(crate) struct ConnectionCloser(Arc<Activity>);

impl ConnectionCloser {
    /// The closer of the connection whose request is being handled, when it
    /// is HTTP/1; call it from the request's handler.
    pub(crate) fn current() -> Option<Self> {
        HTTP1_CONNECTION.try_with(|activity| Self(activity.clone())).ok()
    }

    /// Drops the connection: its client gets what the kernel already holds
    /// for it, then the end of the connection, not the end of a response.
    pub(crate) fn close(&self) {
        self.0.close.notify_one();
    }
}

/// Requests in flight on a connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    /// Closes the connection at once ([`ConnectionCloser`]).
    close: tokio::sync::Notify,
    opened: Instant,
    /// When the last request ended, in µs since `opened` (0: none yet).
    quiet_since_us: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            close: tokio::sync::Notify::new(),
            opened: Instant::now(),
            quiet_since_us: AtomicU64::new(0),
        }
    }

    /// A request started; the guard ends it when its response body is done.
    fn start(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(self.clone())
    }

    /// Whether nothing has been in flight for `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.quiet_since().elapsed() >= idle
    }

    /// When to look again: when the connection will have been idle for
    /// `idle` if nothing starts, or an idle period from now while busy.
    fn quiet_until(&self, idle: Duration) -> tokio::time::Instant {
        let from = if self.in_flight.load(Ordering::Relaxed) == 0 { self.quiet_since() } else { Instant::now() };
        tokio::time::Instant::from_std(from + idle)
    }

    fn quiet_since(&self) -> Instant {
        self.opened + Duration::from_micros(self.quiet_since_us.load(Ordering::Relaxed))
    }
}

/// One request in flight on a connection.
struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let since = self.0.opened.elapsed().as_micros();
            self.0.quiet_since_us.store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
}

/// A response body that ends its request's activity when it is done (or dropped).
struct Tracked {
    body: Body,
    _guard: ActivityGuard,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = crate::gateway::http::StreamCut;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Answers a connection over the limit with a 503 and closes it, so that a
/// flood cannot take every file descriptor and a client learns why.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":{"message":"the router has too many connections open; retry shortly","type":"server_error","param":null,"code":"too_many_connections"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// The server's two connection builders, configured alike.
struct Builders {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c): it opened with the preface.
    Http2,
}

/// Tells HTTP/2 from HTTP/1 by the connection's first bytes, peeked rather
/// than read, so hyper's first read takes the whole request head. (hyper's
/// own sniff reads up to 24 bytes first; its HTTP/1 read buffer then grew
/// from 8 to 16 KiB on every connection.) HTTP/2 when the bytes are its
/// preface, HTTP/1 as soon as they differ; an error when the peer closes
/// first. The caller bounds it with the header timeout.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut seen = [0u8; PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut seen).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if seen[..n] != PREFACE[..n] {
            return Ok(Protocol::Http1);
        }
        if n == PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // Part of the preface: a peek returns at once while those bytes
        // wait, so look again after a pause (rare: clients send it whole).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
