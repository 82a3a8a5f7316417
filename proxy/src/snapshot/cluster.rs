//! Clusters: a service, or a subset of one, with its endpoints per port and its resolved
//! traffic policy (balancing, consistent hashing, circuit breakers, outlier detection).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use halyard_certs::SpiffeId;
use halyard_xds::{self as xds, duration_or, LoadBalancer, Protocol};

use super::{defaults, BuildError};
use crate::upstream::breaker::{Breaker, Limits};
use crate::upstream::hash::Ring;
use crate::upstream::outlier::OutlierConfig;
use crate::upstream::{TlsOrigin, Transport, Upstream, UpstreamKey};

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
    pub tls: OriginTls,
}

/// TLS origination of a service or subset: for all ports, and per port.
#[derive(Debug, Clone, Default)]
pub(super) struct OriginTls {
    all: Option<Arc<TlsOrigin>>,
    ports: Vec<(u16, Option<Arc<TlsOrigin>>)>,
}

impl OriginTls {
    /// Reads the settings' files; `at` is the settings' config path (for errors), `host` the
    /// service's first host (the default server name).
    fn build(
        tls: Option<&xds::UpstreamTls>,
        port_tls: &[xds::PortTls],
        host: Option<&str>,
        at: &str,
    ) -> Result<Self, BuildError> {
        let one = |t: &xds::UpstreamTls, at: String| {
            if t.insecure_skip_verify {
                tracing::warn!(config = %at, "insecureSkipVerify: the upstream server's certificate is not verified");
            }
            TlsOrigin::from_xds(t, host).map_err(|source| BuildError::Tls { at, source })
        };
        let all = tls.map(|t| one(t, format!("{at}.tls"))).transpose()?;
        let mut ports = Vec::with_capacity(port_tls.len());
        for (i, p) in port_tls.iter().enumerate() {
            let origin = p
                .tls
                .as_ref()
                .map(|t| one(t, format!("{at}.portTls[{i}].tls")))
                .transpose()?;
            ports.push((p.port as u16, origin));
        }
        Ok(Self { all, ports })
    }

    /// The TLS originated on a service port, if any.
    fn for_port(&self, port: u16) -> Option<&Arc<TlsOrigin>> {
        match self.ports.iter().find(|(p, _)| *p == port) {
            Some((_, origin)) => origin.as_ref(),
            None => self.all.as_ref(),
        }
    }
}

impl Policy {
    fn new(
        lb: LoadBalancer,
        hash: Option<&xds::ConsistentHash>,
        pool: Option<&xds::ConnectionPool>,
        outlier: Option<&xds::OutlierDetection>,
        timeouts: [Option<&pbjson_types::Duration>; 3],
        tls: OriginTls,
    ) -> Self {
        Self {
            tls,
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

    /// The service's own policy; `si` is its index in the config (for errors).
    pub fn of_service(s: &xds::Service, si: usize) -> Result<Self, BuildError> {
        let at = format!("services[{si}]");
        let tls = OriginTls::build(
            s.tls.as_ref(),
            &s.port_tls,
            s.hosts.first().map(String::as_str),
            &at,
        )?;
        Ok(Self::new(
            s.load_balancer(),
            s.consistent_hash.as_ref(),
            s.connection_pool.as_ref(),
            s.outlier_detection.as_ref(),
            [
                s.connect_timeout.as_ref(),
                s.idle_timeout.as_ref(),
                s.tcp_idle_timeout.as_ref(),
            ],
            tls,
        ))
    }

    /// A subset's (complete) policy; `at` is its config path.
    pub fn of(p: &xds::TrafficPolicy, s: &xds::Service, at: &str) -> Result<Self, BuildError> {
        let tls = OriginTls::build(
            p.tls.as_ref(),
            &p.port_tls,
            s.hosts.first().map(String::as_str),
            at,
        )?;
        Ok(Self::new(
            p.load_balancer(),
            p.consistent_hash.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            [
                p.connect_timeout.as_ref(),
                p.idle_timeout.as_ref(),
                p.tcp_idle_timeout.as_ref(),
            ],
            tls,
        ))
    }

    /// The key of endpoint `e` of service `svc` on port `p` (whose endpoint port is
    /// `target`): TLS origination when the port has it, else mutual TLS when the endpoint has
    /// an identity, else plaintext.
    pub fn endpoint_key(
        &self,
        svc: &xds::Service,
        e: &xds::Endpoint,
        p: &xds::ServicePort,
        target: u16,
    ) -> Result<UpstreamKey, BuildError> {
        let transport = match self.tls.for_port(p.port as u16) {
            Some(origin) => Transport::Tls(origin.clone()),
            None => {
                let identity = match e.identity.as_str() {
                    "" => None,
                    id => Some(id.parse::<SpiffeId>().map_err(|err| BuildError::Identity {
                        service: svc.name.clone(),
                        reason: err.to_string(),
                    })?),
                };
                let sidecar = e
                    .sidecar_address
                    .parse()
                    .ok()
                    .filter(|_| identity.is_some());
                Transport::mesh_or_plain(identity, sidecar)
            }
        };
        Ok(UpstreamKey {
            host: e.address.clone(),
            port: match (e.ports.get(&p.name), e.port) {
                (Some(&n), _) if n != 0 => n as u16,
                (_, 0) => target,
                (_, n) => n as u16,
            },
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            transport,
        })
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
