//! Upstream endpoints: their connection pools, in-flight accounting and load balancing.

mod balance;
pub mod breaker;
pub mod hash;
pub mod origin;
pub mod outlier;
mod pool;
pub mod transport;
mod tunnels;
pub mod verify;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use balance::{pick, Avoid};
pub use origin::{OriginError, TlsOrigin};
pub use pool::{Conn, ConnectError, HttpVersion, PooledH1};
pub use transport::Transport;
pub use tunnels::{TunnelSlot, TUNNELS_PER_CONNECTION};

use hyper::client::conn::http2;

use crate::io::body::ProxyBody;
use crate::io::UpstreamIo;
use crate::mtls::{Alpn, MeshTls};

use pool::Pool;
use tunnels::Tunnels;

/// Identity of an upstream endpoint: where it is and how its pool behaves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    /// IP address or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// How the endpoint is reached: plaintext, mesh mutual TLS or TLS origination.
    pub transport: Transport,
}

impl UpstreamKey {
    /// An endpoint reached in plaintext with default pool settings (passthrough, local app).
    pub fn plain(
        host: String,
        port: u16,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            host,
            port,
            connect_timeout,
            idle_timeout,
            transport: Transport::Plain,
        }
    }
}

/// One endpoint (host:port) with its connection pool and live load.
pub struct Upstream {
    key: UpstreamKey,
    /// `host:port`, as shown in logs.
    pub authority: Arc<str>,
    /// The SPIFFE ID its sidecar must prove, as shown in logs and metrics.
    pub identity: Option<Arc<str>>,
    /// Resolved address when the host is an IP literal.
    ip: Option<SocketAddr>,
    /// Requests and connections currently using this endpoint.
    in_flight: AtomicUsize,
    /// Outlier-detection state (shared by every cluster that uses the endpoint).
    pub health: outlier::Health,
    pool: Pool,
    tunnels: Tunnels,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority)
            .finish()
    }
}

impl Upstream {
    /// Creates an endpoint with an empty pool.
    pub fn new(key: UpstreamKey) -> Self {
        let ip = key
            .host
            .parse()
            .ok()
            .map(|ip| SocketAddr::new(ip, key.port));
        let authority: Arc<str> = match ip {
            Some(a) => a.to_string().into(),
            None => format!("{}:{}", key.host, key.port).into(),
        };
        Self {
            pool: Pool::new(key.idle_timeout),
            tunnels: Tunnels::default(),
            identity: match &key.transport {
                Transport::Mesh { identity, .. } => Some(identity.to_string().into()),
                _ => None,
            },
            key,
            authority,
            ip,
            in_flight: AtomicUsize::new(0),
            health: outlier::Health::default(),
        }
    }

    /// The key this endpoint was built from.
    pub fn key(&self) -> &UpstreamKey {
        &self.key
    }

    /// Current number of requests/connections using it.
    pub fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks one more user until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves the endpoint's socket address.
    async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        if let Some(a) = self.ip {
            return Ok(a);
        }
        let mut addrs = tokio::net::lookup_host((self.key.host.as_str(), self.key.port))
            .await
            .map_err(ConnectError::Resolve)?;
        addrs
            .next()
            .ok_or_else(|| ConnectError::Resolve(std::io::Error::other("no addresses")))
    }

    /// Connects TCP to `via`, else to the endpoint itself.
    async fn tcp(&self, via: Option<SocketAddr>) -> Result<tokio::net::TcpStream, ConnectError> {
        let addr = match via {
            Some(a) => a,
            None => self.resolve().await?,
        };
        pool::connect_tcp(addr, self.key.connect_timeout).await
    }

    /// Whether traffic to this endpoint goes over the mesh's mutual TLS.
    pub fn mtls(&self) -> bool {
        matches!(self.key.transport, Transport::Mesh { .. })
    }

    /// Opens a connection over the endpoint's transport, offering `alpn` over TLS: plain TCP;
    /// mesh mutual TLS, which fails unless the proxy has a certificate and the peer proves
    /// exactly the expected identity; or originated TLS, verifying the server per its
    /// settings.
    pub async fn connect(
        &self,
        tls: Option<&MeshTls>,
        alpn: Alpn,
    ) -> Result<UpstreamIo, ConnectError> {
        match &self.key.transport {
            Transport::Plain => Ok(UpstreamIo::Plain(self.tcp(None).await?)),
            Transport::Mesh { identity, sidecar } => {
                let tcp = self.tcp(*sidecar).await?;
                let tls = tls.ok_or(ConnectError::Tls(crate::mtls::TlsError::NoCertificate(
                    "the proxy has no identity (--ca-addr, or --cert-chain-file and --key-file)",
                )))?;
                let name = crate::mtls::server_name_for_port(self.key.port);
                let stream = tls.connect(tcp, identity, alpn, name).await?;
                Ok(UpstreamIo::Tls(Box::new(stream)))
            }
            Transport::Tls(origin) => {
                let tcp = self.tcp(None).await?;
                let stream = transport::originate(origin, tcp, alpn, &self.key.host).await?;
                Ok(UpstreamIo::Tls(Box::new(stream)))
            }
        }
    }

    /// Gets a ready HTTP connection of the given version: pooled, or new.
    /// `max_uses` caps the requests one connection carries (0 = unlimited).
    pub async fn checkout(
        self: &Arc<Self>,
        version: HttpVersion,
        tls: Option<&MeshTls>,
        max_uses: usize,
    ) -> Result<Conn, ConnectError> {
        self.pool.checkout(self, version, tls, max_uses).await
    }

    /// An HTTP/2 connection to this endpoint's sidecar with room for one more tunnel, and
    /// the tunnel's place on it (held for as long as the tunnel lives).
    pub async fn checkout_tunnel(
        &self,
        tls: Option<&MeshTls>,
    ) -> Result<(http2::SendRequest<ProxyBody>, TunnelSlot), ConnectError> {
        self.tunnels.checkout(self, tls).await
    }

    /// Drops idle connections older than the idle timeout.
    pub fn sweep(&self) {
        self.pool.sweep();
        self.tunnels.sweep();
    }
}

/// Holds one unit of an upstream's in-flight count.
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    /// The upstream being used.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
