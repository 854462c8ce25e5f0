//! A policy origin for tests: files served over HTTP with an ETag (their
//! SHA-256) and `304 Not Modified` for `If-None-Match`; it can go down
//! (connections refused) and come back on the same port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

#[derive(Default)]
struct Shared {
    files: Mutex<HashMap<String, Bytes>>,
    not_modified: AtomicU64,
    requests: AtomicU64,
}

/// A running origin; dropping it stops it.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Origin {
    /// Starts an origin on a free port.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let task = Some(tokio::spawn(serve(listener, shared.clone())));
        Origin { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Serves `bytes` at `/PATH` from now on.
    pub fn put(&self, path: &str, bytes: impl Into<Bytes>) {
        self.shared.files.lock().unwrap().insert(path.to_owned(), bytes.into());
    }

    /// Answers that were `304 Not Modified`.
    pub fn not_modified(&self) -> u64 {
        self.shared.not_modified.load(Ordering::Relaxed)
    }

    /// Requests answered.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Stops listening and drops every connection.
    pub fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port, with the same files.
    pub async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.down();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections die with this task (a JoinSet aborts them when dropped).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn answer(shared: &Shared, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = request.uri().path().trim_start_matches('/');
    let Some(bytes) = shared.files.lock().unwrap().get(path).cloned() else {
        return Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::new())).unwrap();
    };
    let etag = format!("\"{}\"", switchyard::policy::signing::digest(&bytes));
    if request.headers().get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        shared.not_modified.fetch_add(1, Ordering::Relaxed);
        return Response::builder().status(StatusCode::NOT_MODIFIED).header("etag", etag).body(Full::new(Bytes::new())).unwrap();
    }
    Response::builder().header("etag", etag).body(Full::new(bytes)).unwrap()
}
