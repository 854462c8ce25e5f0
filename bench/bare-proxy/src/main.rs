//! `bare-proxy LISTEN UPSTREAM_BASE_URL [MODEL]`: parses the chat request,
//! sets the model (default `gpt-bench`), forwards it, returns the answer; a
//! stream is passed through as it comes. What every router pays at least;
//! bench/load.sh and bench/stress.sh measure Switchyard against it in the
//! same run.

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listener = tokio::net::TcpListener::bind(&args[1]).await.expect("listen");
    let url = format!("{}/chat/completions", args[2]);
    let model = args.get(3).cloned().unwrap_or_else(|| "gpt-bench".into());
    let client = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    println!("bare proxy listening on http://{}", listener.local_addr().unwrap());
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let (client, url, model) = (client.clone(), url.clone(), model.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (client, url, model) = (client.clone(), url.clone(), model.clone());
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let mut json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    json["model"] = serde_json::Value::String(model);
                    let stream = json["stream"] == serde_json::Value::Bool(true);
                    let answer =
                        client.post(&url).header("content-type", "application/json").body(serde_json::to_vec(&json).unwrap()).send().await;
                    let (body, content_type): (Body, &str) = match answer {
                        Ok(r) if stream => {
                            let frames = r.bytes_stream().map_ok(Frame::data).map_err(std::io::Error::other);
                            (StreamBody::new(frames).boxed_unsync(), "text/event-stream")
                        }
                        Ok(r) => {
                            (Full::new(r.bytes().await.unwrap_or_default()).map_err(|e| match e {}).boxed_unsync(), "application/json")
                        }
                        Err(_) => (Full::new(Bytes::from_static(b"{}")).map_err(|e| match e {}).boxed_unsync(), "application/json"),
                    };
                    let mut response = Response::new(body);
                    response.headers_mut().insert("content-type", content_type.parse().unwrap());
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
