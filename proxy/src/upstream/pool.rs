//! Per-endpoint HTTP connection pools: a bounded stack of idle HTTP/1.1 connections with an
//! idle timeout, and one shared, multiplexed HTTP/2 connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Upstream;
use crate::io::body::ProxyBody;
use crate::mtls::{Alpn, MeshTls};

/// Idle HTTP/1.1 connections kept per endpoint at most.
const MAX_IDLE_H1: usize = 256;

/// HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// DNS resolution failed.
    #[error("resolve: {0}")]
    Resolve(std::io::Error),
    /// The TCP connect failed (refused, unreachable...).
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TCP connect did not finish in time.
    #[error("connect timeout")]
    Timeout,
    /// The HTTP handshake failed.
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    /// Mutual TLS to the endpoint's sidecar failed (no certificate, wrong peer identity...).
    #[error(transparent)]
    Tls(#[from] crate::mtls::TlsError),
}

/// A ready connection to send one request on.
pub enum Conn {
    /// An HTTP/1.1 connection, exclusively ours until returned.
    H1(PooledH1),
    /// A handle to a shared HTTP/2 connection.
    H2(http2::SendRequest<ProxyBody>),
}

/// An HTTP/1.1 connection taken from a pool; give it back with [`PooledH1::release`] once the
/// response body has been read to the end.
pub struct PooledH1 {
    /// The request sender.
    pub sender: http1::SendRequest<ProxyBody>,
    upstream: Arc<Upstream>,
    /// Requests sent on the connection, this one included.
    uses: usize,
    /// Requests allowed per connection (0 = unlimited).
    max_uses: usize,
}

impl PooledH1 {
    /// Returns the connection to its endpoint's idle list.
    pub fn release(self) {
        if self.sender.is_closed() || (self.max_uses != 0 && self.uses >= self.max_uses) {
            return;
        }
        let mut idle = self
            .upstream
            .pool
            .h1
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_H1 {
            idle.push(IdleH1 {
                sender: self.sender,
                since: Instant::now(),
                uses: self.uses,
            });
        }
    }
}

struct IdleH1 {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
    uses: usize,
}

/// The shared HTTP/2 connection and the number of requests it has carried.
struct SharedH2 {
    sender: http2::SendRequest<ProxyBody>,
    uses: Arc<std::sync::atomic::AtomicUsize>,
    /// The certificate this proxy presented when it was made (mesh connections).
    cert: Option<i64>,
}

/// The pool of one endpoint.
pub(super) struct Pool {
    h1: Mutex<Vec<IdleH1>>,
    h2: Mutex<Option<SharedH2>>,
    /// Serialises HTTP/2 connects so concurrent requests share one new connection.
    h2_connecting: tokio::sync::Mutex<()>,
    idle_timeout: Duration,
}

pub(super) async fn connect_tcp(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout),
        Ok(Err(e)) => return Err(ConnectError::Connect(e)),
        Ok(Ok(s)) => s,
    };
    // Small writes (headers, gRPC frames) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Pool {
    pub(super) fn new(idle_timeout: Duration) -> Self {
        Self {
            h1: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
            idle_timeout,
        }
    }

    fn lock_h1(&self) -> std::sync::MutexGuard<'_, Vec<IdleH1>> {
        self.h1.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared connection, counting one more request on it; a connection that reaches
    /// `max_uses` is taken out of the pool (it finishes its streams, then closes).
    /// The shared HTTP/2 connection, unless it is closed or was made with a certificate that
    /// has since been replaced (the peer would see it expire while the connection lives on).
    fn current_h2(
        &self,
        max_uses: usize,
        cert: Option<i64>,
    ) -> Option<http2::SendRequest<ProxyBody>> {
        let mut slot = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = slot
            .as_ref()
            .filter(|s| !s.sender.is_closed() && s.cert == cert)?;
        let sender = shared.sender.clone();
        let uses = shared
            .uses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if max_uses != 0 && uses >= max_uses {
            *slot = None;
        }
        Some(sender)
    }

    pub(super) async fn checkout(
        &self,
        up: &Arc<Upstream>,
        version: HttpVersion,
        tls: Option<&MeshTls>,
        max_uses: usize,
    ) -> Result<Conn, ConnectError> {
        match version {
            HttpVersion::Http1 => {
                let (sender, uses) = match self.pop_idle_h1() {
                    Some(idle) => idle,
                    None => (self.connect_h1(up, tls).await?, 0),
                };
                Ok(Conn::H1(PooledH1 {
                    sender,
                    upstream: up.clone(),
                    uses: uses + 1,
                    max_uses,
                }))
            }
            HttpVersion::Http2 => {
                let cert = tls.filter(|_| up.mtls()).and_then(MeshTls::certificate);
                if let Some(s) = self.current_h2(max_uses, cert) {
                    return Ok(Conn::H2(s));
                }
                let _one_at_a_time = self.h2_connecting.lock().await;
                if let Some(s) = self.current_h2(max_uses, cert) {
                    return Ok(Conn::H2(s));
                }
                let sender = connect_h2(up, tls).await?;
                if max_uses != 1 {
                    *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = Some(SharedH2 {
                        sender: sender.clone(),
                        uses: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
                        cert,
                    });
                }
                Ok(Conn::H2(sender))
            }
        }
    }

    /// Newest first: recently used connections are the least likely to have been closed.
    fn pop_idle_h1(&self) -> Option<(http1::SendRequest<ProxyBody>, usize)> {
        let mut idle = self.lock_h1();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < self.idle_timeout && entry.sender.is_ready() {
                return Some((entry.sender, entry.uses));
            }
        }
        None
    }

    async fn connect_h1(
        &self,
        up: &Upstream,
        tls: Option<&MeshTls>,
    ) -> Result<http1::SendRequest<ProxyBody>, ConnectError> {
        let io = up.connect(tls, Alpn::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(ConnectError::Handshake)?;
        let authority = up.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %authority, error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }

    pub(super) fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.lock_h1()
            .retain(|e| e.since.elapsed() < timeout && !e.sender.is_closed());
        let mut h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        if h2.as_ref().is_some_and(|s| s.sender.is_closed()) {
            *h2 = None;
        }
    }
}

/// A new HTTP/2 connection to `up` (mutual TLS when `tls` is given and `up` is a mesh endpoint).
pub(super) async fn connect_h2(
    up: &Upstream,
    tls: Option<&MeshTls>,
) -> Result<http2::SendRequest<ProxyBody>, ConnectError> {
    let io = up.connect(tls, Alpn::H2).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .adaptive_window(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    let authority = up.authority.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(upstream = %authority, error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}
