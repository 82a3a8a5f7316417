//! `halyard-control echo`: a small app for demos, tests and benchmarks that answers every
//! HTTP/1.1 or HTTP/2 request with JSON describing it (its name, method, path, headers), so one
//! can see what the mesh added. `up` runs it behind sidecars labelled `halyard.dev/demo-app: echo`.
//!
//! Query parameters shape the answer, for tests and benchmarks: `delay_ms=N` waits before
//! answering, `status=N` sets the status, `bytes=N` streams N zero bytes instead of JSON.
//! Flags make a misbehaving instance for resilience tests: `--fail-percent P` answers P % of
//! requests with `--fail-status` (503), `--hang` never answers. Every answer carries
//! `x-echo-served: N`, the number of requests this instance has received, and
//! `x-echo-workload: NAME`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// A body of `remaining` zero bytes, produced in 64 KiB chunks without holding them all.
struct Zeros {
    remaining: u64,
}

static ZEROS: [u8; 65536] = [0; 65536];

impl http_body::Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(ZEROS.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &ZEROS[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Returns the value of query parameter `key` parsed as a number.
fn query_num(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

type EchoBody = Either<Full<Bytes>, Zeros>;

/// How an instance behaves, shared by its connections.
struct Behaviour {
    name: String,
    fail_percent: f64,
    fail_status: http::StatusCode,
    hang: bool,
    served: std::sync::atomic::AtomicU64,
}

async fn echo(
    me: &'static Behaviour,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    let served = me.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if me.hang {
        // Held until the client gives up.
        std::future::pending::<()>().await;
    }
    let mut resp = answer(me, req).await?;
    let h = resp.headers_mut();
    h.insert("x-echo-served", http::HeaderValue::from(served));
    if let Ok(v) = http::HeaderValue::from_str(&me.name) {
        h.insert("x-echo-workload", v);
    }
    Ok(resp)
}

async fn answer(
    me: &'static Behaviour,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    let name = me.name.as_str();
    if me.fail_percent > 0.0 && fastrand::f64() * 100.0 < me.fail_percent {
        let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(
            b"injected failure\n",
        ))));
        *resp.status_mut() = me.fail_status;
        return Ok(resp);
    }
    let (parts, body) = req.into_parts();
    let query = parts.uri.query();
    if let Some(ms) = query_num(query, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = query_num(query, "status")
        .and_then(|s| http::StatusCode::from_u16(s as u16).ok())
        .unwrap_or(http::StatusCode::OK);
    if let Some(n) = query_num(query, "bytes") {
        drop(body);
        let mut resp = Response::new(Either::Right(Zeros { remaining: n }));
        *resp.status_mut() = status;
        return Ok(resp);
    }
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
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// `echo` arguments.
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Name reported in every answer (the workload's).
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub listen: SocketAddr,
    /// Answer this share of requests (0-100) with --fail-status.
    #[arg(long, default_value_t = 0.0)]
    pub fail_percent: f64,
    /// Status of the failed answers.
    #[arg(long, default_value_t = 503)]
    pub fail_status: u16,
    /// Accept requests but never answer them.
    #[arg(long)]
    pub hang: bool,
}

/// Serves until the process is stopped; prints `echo `NAME` listening on ADDR` once bound.
pub async fn run(args: EchoArgs) -> std::io::Result<()> {
    let fail_status = http::StatusCode::from_u16(args.fail_status)
        .map_err(|_| std::io::Error::other("--fail-status is not an HTTP status"))?;
    let me: &'static Behaviour = Box::leak(Box::new(Behaviour {
        name: args.name,
        fail_percent: args.fail_percent,
        fail_status,
        hang: args.hang,
        served: std::sync::atomic::AtomicU64::new(0),
    }));
    let name = me.name.as_str();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("echo `{name}` listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("echo `{name}`: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| echo(me, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}
