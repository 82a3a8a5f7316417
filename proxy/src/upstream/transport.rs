//! How an upstream is reached — one variant each: plaintext, the mesh's mutual TLS (the
//! workload's certificate, exactly the expected SPIFFE ID), or TLS origination
//! (DestinationRule `tls` SIMPLE/MUTUAL) — and the origination handshake.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use halyard_certs::SpiffeId;
use rustls::ProtocolVersion;
use tokio::net::TcpStream;
use tokio_rustls::{client, TlsConnector};

use super::origin::TlsOrigin;
use super::verify::{failure_reason, Asked};
use crate::mtls::{Alpn, TlsError, HANDSHAKE_TIMEOUT};

/// Longest wait, after a TLS 1.3 handshake in which the server asked for a client
/// certificate, for the server's verdict on it (an alert, or any record meaning it was
/// accepted); TLS 1.3 servers judge the certificate after the client considers the handshake
/// done. Without a verdict by then the connection is used.
const VERDICT_WAIT: Duration = Duration::from_millis(500);

/// The way to one upstream endpoint; part of its key, so each way has its own pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain TCP.
    Plain,
    /// Mutual TLS with the workload's certificate to a sidecar proving `identity`.
    Mesh {
        /// The SPIFFE ID the endpoint's sidecar must prove.
        identity: SpiffeId,
        /// Where the sidecar accepts mutual TLS when it is not reached through iptables
        /// redirection.
        sidecar: Option<SocketAddr>,
    },
    /// TLS originated by the proxy, verifying the server per the settings.
    Tls(Arc<TlsOrigin>),
}

impl Transport {
    /// The mesh transport, or plain without an identity (`sidecar` needs the identity).
    pub fn mesh_or_plain(identity: Option<SpiffeId>, sidecar: Option<SocketAddr>) -> Self {
        match identity {
            Some(identity) => Transport::Mesh { identity, sidecar },
            None => Transport::Plain,
        }
    }
}

/// Reads what the socket has without waiting (for rustls's `read_tls`).
struct TryRead<'a>(&'a TcpStream);

impl Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// The failure of an originated handshake, labelled.
fn failed(source: io::Error, asked: &Asked) -> TlsError {
    let reason = match halyard_certs::tls::rustls_error(&source) {
        Some(e) => failure_reason(e, asked),
        // Closed without an alert after asking for a certificate we did not have.
        None if asked.asked() && !asked.sent() => "certificate_required",
        None => "handshake_failed",
    };
    TlsError::Handshake { reason, source }
}

/// Runs the client handshake of TLS origination on `tcp` to an endpoint at `host`, offering
/// `alpn`.
pub async fn originate(
    origin: &TlsOrigin,
    tcp: TcpStream,
    alpn: Alpn,
    host: &str,
) -> Result<client::TlsStream<TcpStream>, TlsError> {
    let (cfg, asked) = origin.per_connection(alpn);
    let Some(name) = origin.server_name_for(host) else {
        return Err(TlsError::Handshake {
            reason: "bad_server_name",
            source: io::Error::other(format!("`{host}` is not a TLS server name")),
        });
    };
    let connect = TlsConnector::from(cfg).connect(name, tcp);
    let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
        Err(_) => return Err(TlsError::Timeout),
        Ok(Err(e)) => return Err(failed(e, &asked)),
        Ok(Ok(s)) => s,
    };
    let tls13 = stream.get_ref().1.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    if asked.asked() && tls13 {
        verdict(&mut stream, &asked).await?;
    }
    Ok(stream)
}

/// Waits (at most [`VERDICT_WAIT`]) for the first record after the handshake: an alert
/// rejecting the client certificate fails the connect; anything else means it was accepted.
/// Records read here stay buffered in the connection for the stream's reader.
async fn verdict(stream: &mut client::TlsStream<TcpStream>, asked: &Asked) -> Result<(), TlsError> {
    let deadline = tokio::time::Instant::now() + VERDICT_WAIT;
    let (tcp, conn) = stream.get_mut();
    loop {
        match tokio::time::timeout_at(deadline, tcp.readable()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(failed(e, asked)),
            Ok(Ok(())) => {}
        }
        match conn.read_tls(&mut TryRead(tcp)) {
            Ok(0) => {
                return Err(failed(
                    io::Error::new(io::ErrorKind::UnexpectedEof, "closed after the handshake"),
                    asked,
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(failed(e, asked)),
        }
        return match conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => Err(failed(io::Error::new(io::ErrorKind::InvalidData, e), asked)),
        };
    }
}
