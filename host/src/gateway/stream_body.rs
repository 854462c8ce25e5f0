//! A stream's response body. hyper polls it, and polling it runs the relay:
//! no task and no channel per stream (they were 4.8 KiB of each stream's
//! memory and two wake-ups per event). A client that stops reading stops
//! the polling too, so one watch over every stream ends those whose client
//! has taken nothing for `stream_write_timeout_ms`, releases their
//! upstream and closes an HTTP/1 client's connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Frame;

use super::http::StreamCut;
use crate::server::ConnectionCloser;

/// A stream's relay, from its second event to its end-of-stream hooks.
pub(super) type Relaying = Pin<Box<dyn Future<Output = ()> + Send>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the relay leaves a frame for the body to take, and whether the
/// watch ended the stream.
#[derive(Default)]
pub(super) struct Outbox {
    frame: Mutex<Option<Bytes>>,
    stalled: AtomicBool,
}

impl Outbox {
    /// Leaves `bytes` for the client; done once the body has taken them.
    pub(super) async fn send(&self, bytes: Bytes) {
        let mut bytes = Some(bytes);
        std::future::poll_fn(|_| {
            let mut frame = lock(&self.frame);
            match bytes.take() {
                // No waker: the body, the only poller, takes the frame as this
                // returns and polls again when hyper wants the next one.
                Some(b) => {
                    *frame = Some(b);
                    Poll::Pending
                }
                None if frame.is_some() => Poll::Pending,
                None => Poll::Ready(()),
            }
        })
        .await;
    }

    /// Whether the stream was ended because its client stopped reading.
    pub(super) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn take(&self) -> Option<Bytes> {
        lock(&self.frame).take()
    }
}

/// One stream's relay and what the watch needs of it.
struct Driver {
    relay: Mutex<Option<Relaying>>,
    outbox: Arc<Outbox>,
    /// When the body handed hyper a frame and has not been polled since, in
    /// µs after `epoch` plus one (0: not waiting on the client).
    handed_at: AtomicU64,
    epoch: Instant,
    write_timeout: Duration,
    /// Closes an HTTP/1 client's connection once its stream is ended.
    connection: Option<ConnectionCloser>,
}

impl Driver {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        // Polled again: the client took the last frame.
        self.handed_at.store(0, Ordering::Relaxed);
        let mut relay = lock(&self.relay);
        if relay.as_mut().is_some_and(|r| r.as_mut().poll(cx).is_ready()) {
            *relay = None;
        }
        let ended = relay.is_none();
        drop(relay);
        match self.outbox.take() {
            Some(bytes) => {
                self.handed_at.store(self.now(), Ordering::Relaxed);
                Poll::Ready(Some(bytes))
            }
            None if ended => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    fn stalled(&self) -> bool {
        let at = self.handed_at.load(Ordering::Relaxed);
        at != 0 && self.now().saturating_sub(at) >= u64::try_from(self.write_timeout.as_micros()).unwrap_or(u64::MAX)
    }

    /// Ends the relay if its client is still not reading: dropping it runs
    /// its end hooks and releases the upstream.
    fn end_if_stalled(&self) {
        let mut relay = lock(&self.relay);
        if relay.is_none() || !self.stalled() {
            return;
        }
        self.outbox.stalled.store(true, Ordering::Relaxed);
        let ended = relay.take();
        drop(relay);
        drop(ended);
        // hyper, blocked writing to this client, would otherwise hold the
        // connection (its buffers and slot) until the client read again.
        if let Some(connection) = &self.connection {
            connection.close();
        }
    }
}

/// The response body of a stream.
pub(super) struct RelayBody {
    /// The first event, which leaves with the headers.
    first: Option<Bytes>,
    driver: Arc<Driver>,
}

impl hyper::body::Body for RelayBody {
    type Data = Bytes;
    type Error = StreamCut;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamCut>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            this.driver.handed_at.store(this.driver.now(), Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match this.driver.poll(cx) {
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            // Ended by the watch: not the end of a whole stream.
            Poll::Ready(None) if this.driver.outbox.stalled() => Poll::Ready(Some(Err(StreamCut))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Every stream in flight, watched for clients that stopped reading.
#[derive(Default)]
pub(crate) struct StallWatch {
    streams: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    drivers: Vec<Weak<Driver>>,
    /// A sweeping task runs (it ends when no stream is left).
    sweeping: bool,
    /// The shortest write timeout of a stream watched, which sets how often
    /// the watch looks.
    shortest: Option<Duration>,
}

impl StallWatch {
    /// The body of a stream: `first`, then what `relaying` leaves in
    /// `outbox`; ended when its client takes nothing for `write_timeout`.
    pub(super) fn body(self: &Arc<Self>, first: Bytes, write_timeout: Duration, outbox: Arc<Outbox>, relaying: Relaying) -> RelayBody {
        let driver = Arc::new(Driver {
            relay: Mutex::new(Some(relaying)),
            outbox,
            handed_at: AtomicU64::new(0),
            epoch: Instant::now(),
            write_timeout,
            connection: ConnectionCloser::current(),
        });
        let mut watched = lock(&self.streams);
        watched.drivers.push(Arc::downgrade(&driver));
        watched.shortest = Some(watched.shortest.map_or(write_timeout, |s| s.min(write_timeout)));
        if !watched.sweeping {
            watched.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
        RelayBody { first: Some(first), driver }
    }
}

/// Looks over the streams a few times per shortest write timeout (between
/// every 20 ms and every second), until none is left.
async fn sweep(watch: Weak<StallWatch>) {
    loop {
        let every = {
            let Some(watch) = watch.upgrade() else { return };
            let watched = lock(&watch.streams);
            watched.shortest.map_or(Duration::from_secs(1), |s| s / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
        };
        tokio::time::sleep(every).await;
        let Some(watch) = watch.upgrade() else { return };
        let stalled: Vec<Arc<Driver>> = {
            let mut watched = lock(&watch.streams);
            watched.drivers.retain(|d| d.strong_count() > 0);
            if watched.drivers.is_empty() {
                *watched = Watched::default();
                return;
            }
            watched.drivers.iter().filter_map(Weak::upgrade).filter(|d| d.stalled()).collect()
        };
        for driver in stalled {
            driver.end_if_stalled();
        }
    }
}
