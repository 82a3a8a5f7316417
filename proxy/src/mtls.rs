//! Mutual TLS between sidecars: the inbound handshake (ClientHello peeked before a config is
//! chosen, so plaintext, mesh TLS and pass-through TLS can share a port) and outbound
//! connectors that accept only the destination's expected SPIFFE ID.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use halyard_certs::tls::{self as mtls, ClientAuth, ALPN_H2, ALPN_HTTP11};
use halyard_certs::{CertStore, SpiffeId};
use http::HeaderValue;
use rustls::pki_types::ServerName;
use rustls::server::{Accepted, Acceptor};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsConnector};

use crate::ctx::PeerCert;
use crate::io::PrefixedIo;

/// Longest wait for a TLS handshake, either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest ClientHello we buffer while deciding what to do with a connection.
const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// Cached client configs at most (one per expected identity and ALPN); cleared when full.
const MAX_CLIENT_CONFIGS: usize = 4096;

/// What the client side offers in ALPN, which tells the server how to read the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// HTTP/2 (requests between sidecars).
    H2,
    /// HTTP/1.1 (upgraded connections such as WebSocket).
    Http1,
    /// Nothing: opaque bytes (TCP), detected by the server.
    Opaque,
}

impl Alpn {
    fn protocols(self) -> &'static [&'static [u8]] {
        match self {
            Alpn::H2 => &[ALPN_H2],
            Alpn::Http1 => &[ALPN_HTTP11],
            Alpn::Opaque => &[],
        }
    }
}

/// Why a mutual TLS connection could not be made or accepted.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The proxy has no identity (started without `--ca-addr`) or no certificate yet.
    #[error("no workload certificate: {0}")]
    NoCertificate(&'static str),
    /// The handshake failed; `reason` is a short label (see [`mtls::failure_reason`]).
    #[error("TLS handshake failed ({reason}): {source}")]
    Handshake {
        /// Short label for metrics.
        reason: &'static str,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The configuration could not be built (a programming error).
    #[error("TLS configuration: {0}")]
    Config(#[from] halyard_certs::Error),
}

impl TlsError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TlsError::NoCertificate(_) => "no_certificate",
            TlsError::Handshake { reason, .. } => reason,
            TlsError::Timeout => "timeout",
            TlsError::Config(_) => "config",
        }
    }

    fn handshake(source: std::io::Error) -> Self {
        let reason = mtls::rustls_error(&source).map_or("handshake", mtls::failure_reason);
        TlsError::Handshake { reason, source }
    }
}

/// The workload's TLS contexts for mesh traffic.
pub struct MeshTls {
    store: Arc<CertStore>,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<(SpiffeId, Alpn), Arc<ClientConfig>>>,
}

impl MeshTls {
    /// Contexts presenting the certificates of `store`.
    pub fn new(store: Arc<CertStore>) -> Result<Arc<Self>, TlsError> {
        // A peer's ALPN picks HTTP/2 or HTTP/1.1; without ALPN the stream is opaque.
        let server =
            mtls::server_config(store.clone(), ClientAuth::Required, &[ALPN_H2, ALPN_HTTP11])?;
        Ok(Arc::new(Self {
            store,
            server,
            clients: Mutex::new(HashMap::new()),
        }))
    }

    /// The workload's own identity.
    pub fn identity(&self) -> &SpiffeId {
        self.store.identity()
    }

    /// Which certificate is in service (its expiry, Unix seconds): a connection made with
    /// another one is not reused once it has been replaced.
    pub fn certificate(&self) -> Option<i64> {
        self.store.current().map(|l| l.info.not_after)
    }

    /// Whether a certificate is in service.
    pub fn ready(&self) -> bool {
        self.store.current().is_some()
    }

    fn client_config(
        &self,
        expected: &SpiffeId,
        alpn: Alpn,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let key = (expected.clone(), alpn);
        let mut cache = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let cfg = mtls::client_config(self.store.clone(), expected.clone(), alpn.protocols())?;
        if cache.len() >= MAX_CLIENT_CONFIGS {
            cache.clear();
        }
        cache.insert(key, cfg.clone());
        Ok(cfg)
    }

    /// Runs the client handshake on `tcp`, accepting only a server proving `expected`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        expected: &SpiffeId,
        alpn: Alpn,
        server_name: ServerName<'static>,
    ) -> Result<client::TlsStream<TcpStream>, TlsError> {
        if !self.ready() {
            return Err(TlsError::NoCertificate("waiting for the CA"));
        }
        let cfg = self.client_config(expected, alpn)?;
        let connect = TlsConnector::from(cfg).connect(server_name, tcp);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Err(_) => Err(TlsError::Timeout),
            Ok(Err(e)) => Err(TlsError::handshake(e)),
            Ok(Ok(s)) => Ok(s),
        }
    }

    /// Completes the server handshake of a peeked ClientHello, requiring a client certificate
    /// from the trust domain.
    pub async fn accept<I>(&self, hello: ClientHello<I>) -> Result<server::TlsStream<I>, TlsError>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.ready() {
            return Err(TlsError::NoCertificate("waiting for the CA"));
        }
        let start = tokio_rustls::StartHandshake::from_parts(hello.accepted, hello.io);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(self.server.clone())).await
        {
            Err(_) => Err(TlsError::Timeout),
            Ok(Err(e)) => Err(TlsError::handshake(e)),
            Ok(Ok(s)) => Ok(s),
        }
    }
}

/// The TLS server name a client sidecar sends: it names the workload port meant, for a sidecar
/// reached without iptables (Istio's `outbound_.PORT_._.HOST` form).
pub fn server_name_for_port(port: u16) -> ServerName<'static> {
    ServerName::try_from(format!("outbound_.{port}_._.halyard.mesh"))
        .unwrap_or_else(|_| ServerName::try_from("halyard.mesh").expect("static name is valid"))
}

/// The workload port named by a server name of [`server_name_for_port`]'s form.
pub fn port_from_server_name(name: &str) -> Option<u16> {
    name.strip_prefix("outbound_.")?
        .split_once('_')?
        .0
        .parse()
        .ok()
}

/// A ClientHello read off a connection, before any answer was sent.
pub struct ClientHello<I> {
    accepted: Accepted,
    io: I,
    /// The raw bytes read so far, to replay if the connection is passed through untouched.
    raw: Bytes,
    server_name: Option<String>,
}

impl<I> ClientHello<I> {
    /// The server name (SNI) the client asked for.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Gives the connection back with every byte read so far replayed first (pass-through).
    pub fn into_passthrough(self) -> PrefixedIo<I> {
        PrefixedIo::new(self.raw, self.io)
    }
}

/// Why no ClientHello could be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The bytes are not a TLS ClientHello, or it is larger than we buffer.
    #[error("malformed ClientHello: {0}")]
    Malformed(String),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The client went quiet.
    #[error("timed out reading the ClientHello")]
    Timeout,
}

/// Reads a whole ClientHello from `io` (`prefix` holds bytes already read by detection).
pub async fn read_client_hello<I>(
    mut io: I,
    prefix: Bytes,
    timeout: Duration,
) -> Result<ClientHello<I>, HelloError>
where
    I: AsyncRead + Unpin,
{
    let mut raw = BytesMut::from(&prefix[..]);
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        while fed < raw.len() {
            let mut rest = &raw[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(n) => fed += n,
                Err(e) => return Err(HelloError::Malformed(e.to_string())),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(ClientHello {
                    accepted,
                    io,
                    raw: raw.freeze(),
                    server_name,
                });
            }
            Ok(None) => {}
            Err((e, _alert)) => return Err(HelloError::Malformed(e.to_string())),
        }
        if raw.len() >= MAX_CLIENT_HELLO {
            return Err(HelloError::Malformed("ClientHello too large".into()));
        }
        raw.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut raw)).await {
            Err(_) => return Err(HelloError::Timeout),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(0)) => return Err(HelloError::Malformed("connection closed".into())),
            Ok(Ok(_)) => {}
        }
    }
}

impl PeerCert {
    /// The verified peer of a finished server handshake, if it presented a certificate.
    pub fn of(conn: &rustls::ServerConnection, own: &SpiffeId) -> Option<Self> {
        let leaf = conn.peer_certificates()?.first()?;
        let info = halyard_certs::verify::cert_info(leaf).ok()?;
        let identity = info.identity?;
        let not_after = u64::try_from(info.not_after)
            .ok()
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        let hash = halyard_certs::verify::sha256_hex(leaf);
        let xfcc =
            HeaderValue::try_from(format!("By={own};Hash={hash};Subject=\"\";URI={identity}"))
                .ok()?;
        let principal = identity.to_string().into();
        Some(Self {
            identity,
            principal,
            xfcc,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_carries_port() {
        let name = server_name_for_port(9080);
        let ServerName::DnsName(d) = &name else {
            panic!("not a DNS name: {name:?}");
        };
        assert_eq!(port_from_server_name(d.as_ref()), Some(9080));
        assert_eq!(port_from_server_name("example.com"), None);
        assert_eq!(port_from_server_name("outbound_.x_._.a"), None);
        assert_eq!(port_from_server_name("outbound_.70000_._.a"), None);
    }

    #[tokio::test]
    async fn not_tls_is_malformed() {
        let io: &[u8] = b"";
        let r = read_client_hello(
            io,
            Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            HANDSHAKE_TIMEOUT,
        )
        .await;
        assert!(matches!(r, Err(HelloError::Malformed(_))), "{:?}", r.err());
    }
}
