//! The HTTP listener: HTTP/1.1 and HTTP/2 (h2c) on one port, TCP_NODELAY,
//! header limits, bounded connections and first bytes, and graceful shutdown
//! that lets requests and streams in flight finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(response.await) }
                });
                let io = TokioIo::new(FirstByteDeadline::new(stream, limits.header_timeout));
                let connection = builder.serve_connection(io, service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
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
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
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
