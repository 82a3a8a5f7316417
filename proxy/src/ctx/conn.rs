//! What a request knows about the downstream connection it arrived on.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use halyard_certs::SpiffeId;
use halyard_filters::attrs::Connection;
use http::HeaderValue;

use super::ListenerKind;

/// What is known about the downstream connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The listener.
    pub listener: ListenerKind,
    /// The client.
    pub peer: SocketAddr,
    /// Original destination when the connection was redirected to us.
    pub orig_dst: Option<SocketAddr>,
    /// Inbound: the workload port meant (original destination port, or the TLS server name's).
    pub dst_port: Option<u16>,
    /// Inbound: the peer verified by mutual TLS.
    pub peer_cert: Option<PeerCert>,
    /// Inbound: the TLS server name the peer sent.
    pub sni: Option<Box<str>>,
    /// The local address the connection was accepted on.
    pub local: Option<SocketAddr>,
    /// Requests on this connection whose response has not ended.
    pub active: AtomicUsize,
    /// When the connection last had no active request, as ms since `opened`.
    pub idle_since_ms: AtomicU64,
    /// When the connection was accepted.
    pub opened: Instant,
}

impl ConnInfo {
    /// A new connection's record.
    pub fn new(listener: ListenerKind, peer: SocketAddr, orig_dst: Option<SocketAddr>) -> Self {
        Self {
            listener,
            peer,
            orig_dst,
            dst_port: None,
            peer_cert: None,
            sni: None,
            local: None,
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    /// Marks a request started.
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks a request's response ended.
    pub fn request_ended(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = self.opened.elapsed().as_millis() as u64;
            self.idle_since_ms.store(ms, Ordering::Release);
        }
    }

    /// The connection's attributes as filters and policy decisions see them; `port` is the
    /// workload port the connection was meant for.
    pub fn attrs(&self, port: u16) -> Connection<'_> {
        let unspecified = IpAddr::from([0, 0, 0, 0]);
        Connection {
            source_ip: self.peer.ip(),
            // No proxy in front of a sidecar is trusted to report the client: the peer it is.
            remote_ip: self.peer.ip(),
            destination_ip: self.orig_dst.or(self.local).map_or(unspecified, |d| d.ip()),
            destination_port: port,
            principal: self
                .peer_cert
                .as_ref()
                .map(|p| p.identity.as_str())
                .map(|id| id.strip_prefix("spiffe://").unwrap_or(id)),
            sni: self.sni.as_deref(),
        }
    }

    /// How long the connection has had no active request (zero while one is active).
    pub fn idle_for(&self) -> Duration {
        if self.active.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.opened.elapsed().saturating_sub(since)
    }
}

/// What a verified peer is known by, computed once per connection.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// The peer's SPIFFE ID.
    pub identity: SpiffeId,
    /// The same as text, for logs and metric labels.
    pub principal: std::sync::Arc<str>,
    /// `x-forwarded-client-cert` value for requests of this connection (Envoy's format).
    pub xfcc: HeaderValue,
    /// When the peer's certificate stops being valid (its connection is closed then).
    pub not_after: Option<SystemTime>,
}
