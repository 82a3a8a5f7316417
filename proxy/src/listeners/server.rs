//! Serving HTTP/1.1 and HTTP/2 on a downstream connection, with graceful drain.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::http::handle;
use crate::ctx::ConnInfo;
use crate::shared::Shared;

/// Longest wait for a request's headers to arrive.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request header bytes.
    pub max_headers: usize,
    /// Close after this long without an active request.
    pub idle_timeout: Duration,
}

/// Serves HTTP on `io` until the client closes, an error occurs, the connection stays idle
/// too long, or the proxy drains.
pub async fn serve<I>(shared: Arc<Shared>, info: Arc<ConnInfo>, io: I, h2: bool, limits: Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = shared.shutdown.clone();
    let max_headers = limits.max_headers;
    let idle = Idle {
        info: info.clone(),
        timeout: limits.idle_timeout,
    };
    let io = TokioIo::new(io);
    if h2 {
        // Boxed: hyper's HTTP/2 server moves each stream's task (this future, several KiB)
        // several times on its way to the executor, and moving a box is cheap. HTTP/1.1 polls
        // it in place, where the allocation would be the only cost.
        let svc = service_fn(move |req| Infallibly {
            inner: Box::pin(handle(shared.clone(), info.clone(), req)),
        });
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(max_headers as u32)
            .max_concurrent_streams(1024)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .adaptive_window(true)
            .serve_connection(io, svc);
        drive(conn, shutdown, idle).await;
    } else {
        let svc = service_fn(move |req| Infallibly {
            inner: handle(shared.clone(), info.clone(), req),
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Some(HEADER_READ_TIMEOUT))
            .max_buf_size(max_headers.max(8192))
            .keep_alive(true)
            .serve_connection(io, svc)
            .with_upgrades();
        drive(conn, shutdown, idle).await;
    }
}

pin_project_lite::pin_project! {
    /// A request's future as the `Result` hyper's service expects.
    ///
    /// Not `FutureExt::map`, which moves the finished future out to drop it (a copy of several
    /// KiB per request), nor an `async` block, which would hold the future twice.
    struct Infallibly<F> {
        #[pin]
        inner: F,
    }
}

impl<F: std::future::Future> std::future::Future for Infallibly<F> {
    type Output = Result<F::Output, Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}

/// A connection that can stop taking new requests while finishing those in flight.
trait Drainable: std::future::Future<Output = hyper::Result<()>> {
    fn drain(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Drainable for http1::UpgradeableConnection<I, S>
where
    Self: std::future::Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Drainable for http2::Connection<I, S, E>
where
    Self: std::future::Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn drain(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Idle tracking of one connection.
struct Idle {
    info: Arc<ConnInfo>,
    timeout: Duration,
}

impl Idle {
    /// Resolves once the connection has had no active request for the timeout.
    async fn expired(&self) {
        loop {
            let idle = self.info.idle_for();
            if idle >= self.timeout {
                return;
            }
            // Sleep until the earliest moment it could expire.
            tokio::time::sleep(self.timeout - idle).await;
        }
    }
}

async fn drive<C: Drainable>(conn: C, shutdown: tokio_util::sync::CancellationToken, idle: Idle) {
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            // Finish in-flight requests, refuse new ones (HTTP/2 GOAWAY, HTTP/1 close).
            conn.as_mut().drain();
            conn.await
        }
        _ = idle.expired() => {
            tracing::debug!(peer = %idle.info.peer, "closing idle downstream connection");
            conn.as_mut().drain();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP connection ended with error");
    }
}
