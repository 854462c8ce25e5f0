//! `bare-proxy LISTEN UPSTREAM_BASE_URL`: parses the chat request, sets the
//! model, forwards it, returns the answer. What every router pays at least;
//! bench/load.sh measures Switchyard against it in the same run.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listener = tokio::net::TcpListener::bind(&args[1]).await.expect("listen");
    let url = format!("{}/chat/completions", args[2]);
    let client = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    println!("bare proxy listening on http://{}", listener.local_addr().unwrap());
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let mut json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    json["model"] = serde_json::Value::String("gpt-bench".into());
                    let answer =
                        client.post(&url).header("content-type", "application/json").body(serde_json::to_vec(&json).unwrap()).send().await;
                    let bytes = match answer {
                        Ok(r) => r.bytes().await.unwrap_or_default(),
                        Err(_) => Bytes::from_static(b"{}"),
                    };
                    let mut response = Response::new(Full::new(bytes));
                    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
