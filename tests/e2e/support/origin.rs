//! A policy origin for tests: files served over HTTP with an ETag (their
//! SHA-256) and `304 Not Modified` for `If-None-Match`; it can go down
//! (connections refused) and come back on the same port. It can also act as
//! an OCI registry (files under `v2/`) that asks for a bearer token from its
//! token service (`/token`), as Docker Hub and ghcr.io do.

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
    addr: Mutex<Option<SocketAddr>>,
    /// (user, password, token) when `v2/` needs a token.
    token_auth: Mutex<Option<(String, String, String)>>,
    tokens_given: AtomicU64,
    /// Requests to `v2/` that carried Basic credentials (they belong to the token service only).
    credentials_to_registry: AtomicU64,
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
        *shared.addr.lock().unwrap() = Some(addr);
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

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// From now on `v2/` answers only requests with `Bearer TOKEN`, and
    /// `/token` gives TOKEN for `user:password` (Basic).
    pub fn require_token(&self, user: &str, password: &str, token: &str) {
        *self.shared.token_auth.lock().unwrap() = Some((user.into(), password.into(), token.into()));
    }

    /// Tokens the token service gave.
    pub fn tokens_given(&self) -> u64 {
        self.shared.tokens_given.load(Ordering::Relaxed)
    }

    /// Requests to the registry (`v2/`) that carried the credentials.
    pub fn credentials_to_registry(&self) -> u64 {
        self.shared.credentials_to_registry.load(Ordering::Relaxed)
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
    if let Some(refused) = token_check(shared, request, path) {
        return refused;
    }
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

/// The registry's token protocol: `None` when the request may go on.
fn token_check(shared: &Shared, request: &Request<hyper::body::Incoming>, path: &str) -> Option<Response<Full<Bytes>>> {
    use base64::Engine as _;
    let (user, password, token) = shared.token_auth.lock().unwrap().clone()?;
    let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let status = |status: StatusCode| Response::builder().status(status).body(Full::new(Bytes::new())).unwrap();
    if path == "token" {
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        let query = request.uri().query().unwrap_or_default();
        if authorization != basic || !query.contains("service=test-registry") || !query.contains("scope=repository%3A") {
            return Some(status(StatusCode::UNAUTHORIZED));
        }
        shared.tokens_given.fetch_add(1, Ordering::Relaxed);
        return Some(Response::new(Full::new(Bytes::from(format!("{{\"token\": \"{token}\", \"expires_in\": 300}}")))));
    }
    let repository = path.strip_prefix("v2/")?.split("/manifests/").next()?.split("/blobs/").next()?;
    if authorization.starts_with("Basic") {
        shared.credentials_to_registry.fetch_add(1, Ordering::Relaxed);
    }
    if authorization == format!("Bearer {token}") {
        return None;
    }
    let addr = shared.addr.lock().unwrap().unwrap();
    let challenge = format!("Bearer realm=\"http://{addr}/token\",service=\"test-registry\",scope=\"repository:{repository}:pull\"");
    Some(Response::builder().status(StatusCode::UNAUTHORIZED).header("www-authenticate", challenge).body(Full::new(Bytes::new())).unwrap())
}
