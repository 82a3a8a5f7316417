//! A small echo app for demos and benchmarks: answers every HTTP/1.1 or HTTP/2 request with
//! JSON describing it (its name, method, path, headers), so one can see what the mesh added.
//!
//! `cargo run -p halyard-proxy --example echo -- --name echo --listen 127.0.0.1:18080`
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

async fn echo(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Count the body without keeping it.
    let mut body = body;
    let mut body_bytes = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "workload": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "protocol": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut name = "echo".to_string();
    let mut listen: SocketAddr = ([127, 0, 0, 1], 18080).into();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--name", Some(v)) => name = v,
            ("--listen", Some(v)) => {
                listen = v
                    .parse()
                    .map_err(|e| std::io::Error::other(format!("--listen {v}: {e}")))?;
            }
            _ => {
                return Err(std::io::Error::other(
                    "usage: echo [--name NAME] [--listen IP:PORT]",
                ))
            }
        }
    }
    let name: &'static str = Box::leak(name.into_boxed_str());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("echo `{name}` listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| echo(name, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}
