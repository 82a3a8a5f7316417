//! Clusters: a service, or a subset of one, with its endpoints per port and its resolved
//! traffic policy (balancing, consistent hashing, circuit breakers, outlier detection).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use halyard_xds::{self as xds, duration_or, LoadBalancer, Protocol};

use super::defaults;
use crate::upstream::breaker::{Breaker, Limits};
use crate::upstream::hash::Ring;
use crate::upstream::outlier::OutlierConfig;
use crate::upstream::Upstream;

/// A port of a cluster with its endpoints.
#[derive(Debug)]
pub struct ClusterPort {
    /// Service port.
    pub port: u16,
    /// Declared protocol.
    pub protocol: Protocol,
    /// Endpoints at their target port (repeated by weight).
    pub endpoints: Vec<Arc<Upstream>>,
    /// Consistent-hash ring over `endpoints`, when the cluster hashes.
    pub ring: Option<Ring>,
}

/// What a consistent-hash cluster hashes on.
#[derive(Debug, Clone)]
pub enum HashOn {
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value; with a ttl the proxy sets the cookie when it is missing.
    Cookie {
        /// Cookie name.
        name: Box<str>,
        /// Cookie path attribute.
        path: Box<str>,
        /// Lifetime of a generated cookie.
        ttl: Option<Duration>,
    },
    /// The client's IP address.
    SourceIp,
    /// A query parameter's value.
    Query(Box<str>),
}

/// A service, or a subset of one, as the request path sees it.
#[derive(Debug)]
pub struct Cluster {
    /// Service name, with `|subset` for a subset.
    pub name: Arc<str>,
    /// Service name alone (metric labels).
    pub service: Arc<str>,
    /// Ports, in config order.
    pub ports: Vec<ClusterPort>,
    /// Endpoint selection.
    pub lb: LoadBalancer,
    /// Consistent hashing, which replaces `lb` when a key is present.
    pub hash: Option<HashOn>,
    /// Round-robin cursor.
    pub rr: AtomicUsize,
    /// Idle limit for opaque TCP.
    pub tcp_idle_timeout: Duration,
    /// Circuit-breaker limits.
    pub limits: Limits,
    /// Circuit-breaker counters (carried over across reloads).
    pub breaker: Arc<Breaker>,
    /// Outlier detection, when enabled.
    pub outlier: Option<OutlierConfig>,
}

impl Cluster {
    /// Chooses the port: the requested one when it exists, else the first.
    pub fn port(&self, wanted: Option<u16>) -> Option<&ClusterPort> {
        wanted
            .and_then(|w| self.ports.iter().find(|p| p.port == w))
            .or_else(|| self.ports.first())
    }
}

/// The resolved traffic policy of a service or subset.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    pub lb: LoadBalancer,
    pub hash: Option<HashOn>,
    pub points_per_endpoint: u32,
    pub limits: Limits,
    pub outlier: Option<OutlierConfig>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub tcp_idle_timeout: Duration,
}

impl Policy {
    fn new(
        lb: LoadBalancer,
        hash: Option<&xds::ConsistentHash>,
        pool: Option<&xds::ConnectionPool>,
        outlier: Option<&xds::OutlierDetection>,
        timeouts: [Option<&pbjson_types::Duration>; 3],
    ) -> Self {
        Self {
            lb,
            hash: hash.and_then(hash_on),
            points_per_endpoint: hash.map_or(0, |h| h.points_per_endpoint),
            limits: Limits::from_xds(pool),
            outlier: outlier.map(OutlierConfig::from_xds),
            connect_timeout: duration_or(timeouts[0], defaults::CONNECT_TIMEOUT),
            idle_timeout: duration_or(timeouts[1], defaults::IDLE_TIMEOUT),
            tcp_idle_timeout: duration_or(timeouts[2], defaults::TCP_IDLE_TIMEOUT),
        }
    }

    pub fn of_service(s: &xds::Service) -> Self {
        Self::new(
            s.load_balancer(),
            s.consistent_hash.as_ref(),
            s.connection_pool.as_ref(),
            s.outlier_detection.as_ref(),
            [
                s.connect_timeout.as_ref(),
                s.idle_timeout.as_ref(),
                s.tcp_idle_timeout.as_ref(),
            ],
        )
    }

    pub fn of(p: &xds::TrafficPolicy) -> Self {
        Self::new(
            p.load_balancer(),
            p.consistent_hash.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            [
                p.connect_timeout.as_ref(),
                p.idle_timeout.as_ref(),
                p.tcp_idle_timeout.as_ref(),
            ],
        )
    }
}

fn hash_on(h: &xds::ConsistentHash) -> Option<HashOn> {
    use xds::consistent_hash::Key;
    Some(match h.key.as_ref()? {
        Key::Header(name) => {
            HashOn::Header(http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?)
        }
        Key::Cookie(c) => HashOn::Cookie {
            name: c.name.as_str().into(),
            path: c.path.as_str().into(),
            ttl: c
                .ttl
                .as_ref()
                .map(xds::to_std_duration)
                .filter(|d| !d.is_zero()),
        },
        Key::SourceIp(true) => HashOn::SourceIp,
        Key::SourceIp(false) => return None,
        Key::QueryParameter(q) => HashOn::Query(q.as_str().into()),
    })
}
