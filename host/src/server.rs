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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

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
                let io = TokioIo::new(FirstByteDeadline::new(stream, limits.header_timeout));
                // Boxed once: the task's future then holds a pointer, not
                // copies of hyper's connection state for as long as it lives.
                let connection = Box::pin(builder.serve_connection(io, service).into_owned());
                let stopping = stopping.clone();
                tokio::spawn(async move {
                    if let Err(e) = drive(connection, activity, limits.idle_timeout, stopping).await {
                        tracing::debug!("connection ended with an error: {e}");
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

/// Requests in flight on a connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    opened: Instant,
    /// When the last request ended, in µs since `opened` (0: none yet).
    quiet_since_us: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { in_flight: AtomicUsize::new(0), opened: Instant::now(), quiet_since_us: AtomicU64::new(0) }
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
    type Error = std::convert::Infallible;

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

/// A connection that must send its first byte within a deadline: hyper's
/// header timeout starts only after the HTTP/1-or-2 sniff has read, so a
/// client that connects and stays silent would otherwise hold a connection
/// (and a slot) for ever.
struct FirstByteDeadline {
    stream: TcpStream,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl FirstByteDeadline {
    fn new(stream: TcpStream, timeout: Duration) -> Self {
        Self { stream, deadline: Some(Box::pin(tokio::time::sleep(timeout))) }
    }
}

impl AsyncRead for FirstByteDeadline {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.deadline = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no request within the header timeout")));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for FirstByteDeadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
