//! Accepted connections for tonic: plaintext TCP, or TLS terminated here with tokio-rustls,
//! each carrying what the CA service needs to know about its peer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use halyard_certs::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many TLS handshakes run at once.
const MAX_HANDSHAKES: usize = 64;
/// Back-off after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a request knows about its connection (a tonic request extension).
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The SPIFFE ID of a client certificate verified in the TLS handshake.
    pub peer_identity: Option<SpiffeId>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl ConnInfo {
    /// The peer address for logs (`-` when unknown).
    pub fn remote_display(&self) -> String {
        self.remote.map_or_else(|| "-".into(), |a| a.to_string())
    }

    /// `tls` or `plaintext`, for logs.
    pub fn transport(&self) -> &'static str {
        if self.tls {
            "tls"
        } else {
            "plaintext"
        }
    }
}

/// An accepted connection and its `ConnInfo`.
pub struct Conn<S> {
    io: S,
    info: ConnInfo,
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepted TCP connections; owns the listener, so dropping the stream closes the port.
fn accepted(listener: TcpListener) -> impl Stream<Item = (TcpStream, SocketAddr)> {
    futures_util::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some(((tcp, addr), listener));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    })
}

/// Plaintext connections from `listener`.
pub fn plaintext(listener: TcpListener) -> impl Stream<Item = Result<Conn<TcpStream>, io::Error>> {
    accepted(listener).map(|(tcp, addr)| {
        Ok(Conn {
            io: tcp,
            info: ConnInfo {
                remote: Some(addr),
                peer_identity: None,
                tls: false,
            },
        })
    })
}

/// TLS connections from `listener`, handshakes run concurrently (bounded, with a timeout)
/// so that a slow client cannot hold up others. Failed handshakes are logged and skipped.
pub fn tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<Conn<TlsStream<TcpStream>>, io::Error>> {
    let acceptor = TlsAcceptor::from(config);
    accepted(listener)
        .map(move |(tcp, addr)| {
            let acceptor = acceptor.clone();
            async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(peer = %addr, error = %e, "TLS handshake failed");
                            return Err(e);
                        }
                        Err(_) => {
                            tracing::info!(peer = %addr, "TLS handshake timed out");
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "TLS handshake timed out",
                            ));
                        }
                    };
                let peer_identity = halyard_certs::tls::peer_identity(stream.get_ref().1);
                Ok(Conn {
                    io: stream,
                    info: ConnInfo {
                        remote: Some(addr),
                        peer_identity,
                        tls: true,
                    },
                })
            }
        })
        .buffer_unordered(MAX_HANDSHAKES)
}
