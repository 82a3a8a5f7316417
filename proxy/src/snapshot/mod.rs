//! The applied configuration, compiled for the request path. Immutable; a reload builds a
//! new one (reusing endpoint state and pools from the previous) and swaps it in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use halyard_filters::jwt::{JwksStore, JwtError};
use halyard_filters::rbac::RbacError;
use halyard_xds::{self as xds, duration_or, MtlsMode, Protocol, ProxyConfig};

use crate::routes::{
    compile_vhost, host_matches, L4Route, L4View, Route, RouteError, RouteTable, Source,
    VirtualHost,
};
use crate::telemetry::access_log::LogFields;
use crate::telemetry::peer::{PeerHeaders, WorkloadMeta};
use crate::telemetry::trace::{OtlpProtocol, TraceConfig, DEFAULT_FLUSH_INTERVAL};
use crate::upstream::breaker::Breaker;
use crate::upstream::hash::Ring;
use crate::upstream::{Upstream, UpstreamKey};

mod chains;
mod cluster;

pub use chains::InboundChain;

use cluster::Policy;
pub use cluster::{Cluster, ClusterPort, HashOn};

/// Defaults for what the config leaves out.
pub mod defaults {
    use std::time::Duration;
    /// Upstream TCP connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Idle pooled upstream connections.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Idle opaque TCP connections.
    pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Waiting for the first client bytes.
    pub const DETECTION_TIMEOUT: Duration = Duration::from_millis(100);
    /// Idle downstream HTTP connections.
    pub const DOWNSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Request header bytes.
    pub const MAX_REQUEST_HEADERS: usize = 60 * 1024;
    /// Concurrent downstream connections per listener.
    pub const MAX_CONNECTIONS: usize = 100_000;
}

/// A port of the local workload.
#[derive(Debug)]
pub struct InboundTarget {
    /// Original destination port.
    pub port: u16,
    /// Declared protocol.
    pub protocol: Protocol,
    /// Inbound mutual TLS mode (never `MtlsUnset`).
    pub mtls: MtlsMode,
    /// The application.
    pub app: Arc<Upstream>,
}

/// A port's mode: its own, else the workload's, else PERMISSIVE (Istio's default).
fn effective_mtls(port: MtlsMode, workload: MtlsMode) -> MtlsMode {
    match (port, workload) {
        (MtlsMode::MtlsUnset, MtlsMode::MtlsUnset) => MtlsMode::Permissive,
        (MtlsMode::MtlsUnset, w) => w,
        (p, _) => p,
    }
}

/// Resolved proxy-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// First-bytes wait.
    pub detection_timeout: Duration,
    /// Request header limit in bytes.
    pub max_request_headers: usize,
    /// Idle downstream HTTP connections.
    pub downstream_idle_timeout: Duration,
    /// The access-log fields, when access logs are on.
    pub access_log: Option<LogFields>,
    /// Whether Istio's standard metrics are recorded.
    pub istio_metrics: bool,
    /// Per-listener connection cap.
    pub max_connections: usize,
}

/// The next snapshot's generation.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The compiled, immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Version from the config.
    pub version: String,
    /// Which build this is, unique in the process (what was decided under it is known by it).
    pub generation: u64,
    /// When it was applied.
    pub applied_at: SystemTime,
    /// The source resources, for `/config_dump`.
    pub config: ProxyConfig,
    /// Services by index.
    pub clusters: Vec<Arc<Cluster>>,
    /// HTTP routing.
    pub routes: RouteTable,
    /// (service VIP, port) → (cluster, port index).
    by_addr: HashMap<SocketAddr, (usize, usize)>,
    /// A service's cluster index → its TCP routes, in order.
    tcp_routes: HashMap<usize, Vec<L4Route>>,
    /// TLS routes with the (lower-case) hosts of their virtual host, in config order.
    tls_routes: Vec<(Vec<String>, Vec<L4Route>)>,
    /// LocalReply workload ports.
    pub inbound: Vec<InboundTarget>,
    /// Settings.
    pub settings: Settings,
    /// Outbound policy for unknown destinations.
    pub registry_only: bool,
    /// Who this proxy's workload is, for metrics and peer metadata exchange.
    pub local: Arc<LocalWorkload>,
    /// The inbound listener's filters; `None` when the workload has no policies.
    pub inbound_chain: Option<InboundChain>,
    /// Every endpoint, for reuse by the next snapshot and for pool sweeping.
    upstreams: HashMap<UpstreamKey, Arc<Upstream>>,
    /// Circuit-breaker counters by cluster name, for reuse by the next snapshot.
    breakers: HashMap<Arc<str>, Arc<Breaker>>,
}

/// The local workload as telemetry names it.
#[derive(Debug)]
pub struct LocalWorkload {
    /// Metric labels.
    pub meta: WorkloadMeta,
    /// The metadata-exchange headers this proxy sends to mesh peers.
    pub headers: PeerHeaders,
    /// Resolved tracing settings (`None`: tracing off).
    pub tracing: Option<Arc<TraceConfig>>,
}

impl LocalWorkload {
    fn new(config: &ProxyConfig, settings: &xds::Settings) -> Self {
        let w = config.workload.clone().unwrap_or_default();
        let ns = if w.namespace.is_empty() {
            "default"
        } else {
            &w.namespace
        };
        let meta = WorkloadMeta::from_labels(&w.name, ns, &w.labels);
        let tracing = settings.tracing.as_ref().map(|t| {
            // Istio names a workload's traces after its canonical service and namespace.
            let mut resource = vec![("k8s.namespace.name".to_string(), ns.to_string())];
            if !w.name.is_empty() {
                resource.push(("k8s.workload.name".to_string(), w.name.clone()));
            }
            resource.push((
                "service.version".to_string(),
                meta.canonical_revision().to_string(),
            ));
            Arc::new(TraceConfig {
                sampling_percent: t.sampling.unwrap_or(1.0),
                endpoint: t.otlp_endpoint.clone(),
                protocol: match t.protocol() {
                    xds::tracing::Protocol::Http => OtlpProtocol::Http,
                    xds::tracing::Protocol::Grpc => OtlpProtocol::Grpc,
                },
                service_name: format!("{}.{ns}", meta.canonical_service()),
                resource,
                flush_interval: DEFAULT_FLUSH_INTERVAL,
            })
        });
        Self {
            headers: PeerHeaders::new(&meta, &w.labels, None),
            meta,
            tracing,
        }
    }
}

/// Why a validated config could still not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An authorization policy could not be compiled.
    #[error(transparent)]
    Rbac(#[from] RbacError),
    /// JWT rules could not be compiled (e.g. an inline JWKS without usable keys).
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// A route could not be compiled.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// TLS origination settings are unusable (a missing or invalid PEM file...).
    #[error("{at}.{source}")]
    Tls {
        /// The settings' config path, e.g. `services[0].tls`.
        at: String,
        /// What is wrong.
        source: crate::upstream::OriginError,
    },
    /// An endpoint identity is not a valid SPIFFE ID.
    #[error("service {service}: endpoint identity: {reason}")]
    Identity {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
}

impl Snapshot {
    /// Compiles `config`; endpoint state (pools, load) is carried over from `previous`; JWT
    /// key sets come from (and are fetched by) `jwks`, which outlives snapshots.
    // A TLS-origination key hashes only its settings, never its (internally cached) configs.
    #[allow(clippy::mutable_key_type)]
    pub fn build(
        config: ProxyConfig,
        previous: Option<&Snapshot>,
        jwks: &Arc<JwksStore>,
    ) -> Result<Self, BuildError> {
        let inbound_chain = InboundChain::compile(&config, jwks)?;
        let mut upstreams: HashMap<UpstreamKey, Arc<Upstream>> = HashMap::new();
        let mut upstream = |key: UpstreamKey| -> Arc<Upstream> {
            if let Some(u) = upstreams.get(&key) {
                return u.clone();
            }
            let u = previous
                .and_then(|p| p.upstreams.get(&key).cloned())
                .unwrap_or_else(|| Arc::new(Upstream::new(key.clone())));
            upstreams.insert(key, u.clone());
            u
        };

        let mut clusters = Vec::with_capacity(config.services.len());
        let mut breakers = HashMap::new();
        let mut by_addr = HashMap::new();
        // (service index, subset name) → cluster index; subset "" is the whole service.
        let mut cluster_index: HashMap<(usize, &str), usize> = HashMap::new();
        for (si, svc) in config.services.iter().enumerate() {
            let base = Policy::of_service(svc, si)?;
            let mut groups = vec![("", None, base.clone())];
            for (j, sub) in svc.subsets.iter().enumerate() {
                let policy = match &sub.traffic_policy {
                    Some(tp) => Policy::of(
                        tp,
                        svc,
                        &format!("services[{si}].subsets[{j}].trafficPolicy"),
                    )?,
                    None => base.clone(),
                };
                groups.push((sub.name.as_str(), Some(&sub.labels), policy));
            }
            let svc_name: Arc<str> = svc.name.as_str().into();
            for (subset, labels, policy) in groups {
                let name: Arc<str> = if subset.is_empty() {
                    svc_name.clone()
                } else {
                    format!("{}|{subset}", svc.name).into()
                };
                let mut ports = Vec::with_capacity(svc.ports.len());
                for (pi, p) in svc.ports.iter().enumerate() {
                    let port = p.port as u16;
                    let target = if p.target_port == 0 {
                        port
                    } else {
                        p.target_port as u16
                    };
                    let mut endpoints = Vec::new();
                    let mut ids = Vec::new();
                    for e in &svc.endpoints {
                        if let Some(want) = labels {
                            if !want.iter().all(|(k, v)| e.labels.get(k) == Some(v)) {
                                continue;
                            }
                        }
                        let key = policy.endpoint_key(svc, e, p, target)?;
                        let u = upstream(key);
                        // Weights repeat an endpoint in the pick list (bounded to keep it small).
                        for k in 0..e.weight.clamp(1, 16) {
                            if policy.hash.is_some() {
                                ids.push(format!("{}#{k}", u.authority));
                            }
                            endpoints.push(u.clone());
                        }
                    }
                    if subset.is_empty() {
                        for a in &svc.addresses {
                            if let Ok(ip) = a.parse::<IpAddr>() {
                                by_addr
                                    .entry(SocketAddr::new(ip, port))
                                    .or_insert((clusters.len(), pi));
                            }
                        }
                    }
                    let ring = policy.hash.as_ref().map(|_| {
                        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                        Ring::new(&ids, &vec![1; ids.len()], policy.points_per_endpoint)
                    });
                    ports.push(ClusterPort {
                        port,
                        protocol: p.protocol(),
                        endpoints,
                        ring,
                    });
                }
                let breaker = previous
                    .and_then(|p| p.breakers.get(&name).cloned())
                    .unwrap_or_default();
                breakers.insert(name.clone(), breaker.clone());
                cluster_index.insert((si, subset), clusters.len());
                clusters.push(Arc::new(Cluster {
                    service: svc_name.clone(),
                    name,
                    ports,
                    lb: policy.lb,
                    hash: policy.hash,
                    rr: AtomicUsize::new(0),
                    tcp_idle_timeout: policy.tcp_idle_timeout,
                    limits: policy.limits,
                    breaker,
                    outlier: policy.outlier,
                }));
            }
        }

        let cluster_of = |key: &str, subset: &str| {
            let si = config
                .services
                .iter()
                .position(|s| s.name == key)
                .or_else(|| {
                    config
                        .services
                        .iter()
                        .position(|s| s.hosts.iter().any(|h| h == key))
                })?;
            cluster_index.get(&(si, subset)).copied()
        };
        let no_labels = HashMap::new();
        let source = Source {
            labels: config.workload.as_ref().map_or(&no_labels, |w| &w.labels),
            namespace: config
                .workload
                .as_ref()
                .map_or("", |w| w.namespace.as_str()),
        };
        let mut routes = RouteTable::default();
        let mut tcp_routes: HashMap<usize, Vec<L4Route>> = HashMap::new();
        let mut tls_routes = Vec::new();
        for vh in &config.virtual_hosts {
            let http = compile_vhost(vh, source, cluster_of)?;
            // A host with only TCP or TLS routes keeps its service's default HTTP route.
            if !http.routes.is_empty() {
                routes.add(&vh.hosts, http);
            }
            if !vh.tls_routes.is_empty() {
                let compiled =
                    L4Route::compile_all(&vh.name, "tls", &vh.tls_routes, source, &cluster_of)?;
                let hosts = vh.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
                tls_routes.push((hosts, compiled));
            }
            if vh.tcp_routes.is_empty() {
                continue;
            }
            let compiled =
                L4Route::compile_all(&vh.name, "tcp", &vh.tcp_routes, source, &cluster_of)?;
            // The first virtual host naming a service owns its TCP routes (as for HTTP).
            for h in &vh.hosts {
                if let Some(ci) = cluster_of(h, "") {
                    tcp_routes.entry(ci).or_insert_with(|| compiled.clone());
                }
            }
        }
        for (si, svc) in config.services.iter().enumerate() {
            let name: Arc<str> = svc.name.clone().into();
            let Some(&ci) = cluster_index.get(&(si, "")) else {
                continue;
            };
            let vhost = VirtualHost {
                name: name.clone(),
                routes: vec![Route::catch_all(name, ci)],
            };
            routes.add(&svc.hosts, vhost);
        }

        let workload_mtls = config
            .workload
            .as_ref()
            .map_or(MtlsMode::MtlsUnset, |w| w.mtls());
        let inbound = config
            .workload
            .iter()
            .flat_map(|w| &w.ports)
            .map(|p| {
                let port = p.port as u16;
                let app: SocketAddr = p
                    .app_address
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
                InboundTarget {
                    port,
                    protocol: p.protocol(),
                    mtls: effective_mtls(p.mtls(), workload_mtls),
                    app: upstream(UpstreamKey::plain(
                        app.ip().to_string(),
                        app.port(),
                        defaults::CONNECT_TIMEOUT,
                        defaults::IDLE_TIMEOUT,
                    )),
                }
            })
            .collect();

        let s = config.settings.clone().unwrap_or_default();
        let settings = Settings {
            detection_timeout: duration_or(
                s.protocol_detection_timeout.as_ref(),
                defaults::DETECTION_TIMEOUT,
            ),
            max_request_headers: match s.max_request_headers_kb {
                0 => defaults::MAX_REQUEST_HEADERS,
                kb => kb as usize * 1024,
            },
            downstream_idle_timeout: duration_or(
                s.downstream_idle_timeout.as_ref(),
                defaults::DOWNSTREAM_IDLE_TIMEOUT,
            ),
            access_log: s
                .access_log
                .unwrap_or(true)
                .then(|| LogFields::from_names(&s.access_log_fields)),
            istio_metrics: s.istio_metrics.unwrap_or(true),
            max_connections: match s.max_connections {
                0 => defaults::MAX_CONNECTIONS,
                n => n as usize,
            },
        };
        let registry_only = config
            .outbound_traffic_policy
            .as_ref()
            .is_some_and(|p| p.mode() == xds::outbound_traffic_policy::Mode::RegistryOnly);
        Ok(Self {
            local: Arc::new(LocalWorkload::new(&config, &s)),
            version: config.version.clone(),
            applied_at: SystemTime::now(),
            clusters,
            routes,
            by_addr,
            tcp_routes,
            tls_routes,
            inbound,
            settings,
            registry_only,
            inbound_chain,
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            upstreams,
            breakers,
            config,
        })
    }

    /// The cluster port a service VIP:port belongs to.
    pub fn by_addr(&self, addr: SocketAddr) -> Option<(&Arc<Cluster>, &ClusterPort)> {
        let (ci, pi) = *self.by_addr.get(&addr)?;
        let c = self.clusters.get(ci)?;
        Some((c, c.ports.get(pi)?))
    }

    /// Where an outbound TCP or TLS connection goes: a TLS route for its server name first,
    /// then the TCP routes of the service at its destination address (port, subnet,
    /// weights), then that service itself, then — without a redirected address — the
    /// service whose host is the server name. `roll` (any `u64`) picks among weighted
    /// destinations.
    pub fn tcp_target(
        &self,
        dst: Option<SocketAddr>,
        sni: Option<&str>,
        roll: u64,
    ) -> Option<(&Arc<Cluster>, &ClusterPort)> {
        let view = L4View {
            port: dst.map(|d| d.port()),
            ip: dst.map(|d| d.ip()),
            sni,
        };
        let via = |route: &L4Route| {
            let d = route.split.pick_at(roll)?;
            let c = self.clusters.get(d.cluster)?;
            let p = c.port(d.port.or(view.port))?;
            Some((c, p))
        };
        if let Some(name) = sni {
            let route = self
                .tls_routes
                .iter()
                .filter(|(hosts, _)| hosts.iter().any(|h| host_matches(h, name)))
                .find_map(|(_, rs)| rs.iter().find(|r| r.matches(&view)));
            if let Some(r) = route {
                return via(r);
            }
        }
        let Some(dst) = dst else {
            let c = self.cluster_for_host(sni?)?;
            return Some((c, c.port(None)?));
        };
        let (ci, pi) = *self.by_addr.get(&dst)?;
        if let Some(route) = self
            .tcp_routes
            .get(&ci)
            .and_then(|rs| rs.iter().find(|r| r.matches(&view)))
        {
            return via(route);
        }
        let c = self.clusters.get(ci)?;
        Some((c, c.ports.get(pi)?))
    }

    /// The cluster serving an HTTP host name (for CONNECT targets and TCP by name).
    pub fn cluster_for_host(&self, host: &str) -> Option<&Arc<Cluster>> {
        let vh = self.routes.vhost(host)?;
        let r = vh.routes.first()?;
        match &r.action.action {
            crate::routes::Action::Forward(split) => {
                self.clusters.get(split.destinations.first()?.cluster)
            }
            crate::routes::Action::Redirect(_) => None,
        }
    }

    /// The local workload port for an original destination port (first port if none).
    pub fn inbound_target(&self, port: Option<u16>) -> Option<&InboundTarget> {
        port.and_then(|p| self.inbound.iter().find(|t| t.port == p))
            .or_else(|| self.inbound.first())
    }

    /// The inbound mutual TLS mode for a destination port: that of its workload port, else
    /// the workload's (PERMISSIVE when nothing says otherwise).
    pub fn inbound_mtls(&self, port: Option<u16>) -> MtlsMode {
        match self.inbound_target(port) {
            Some(t) => t.mtls,
            None => effective_mtls(
                MtlsMode::MtlsUnset,
                self.config
                    .workload
                    .as_ref()
                    .map_or(MtlsMode::MtlsUnset, |w| w.mtls()),
            ),
        }
    }

    /// Drops expired idle connections of every endpoint.
    pub fn sweep_pools(&self) {
        for u in self.upstreams.values() {
            u.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks() -> Arc<JwksStore> {
        JwksStore::new(tokio_util::sync::CancellationToken::new())
    }

    fn cfg(yaml: &str) -> ProxyConfig {
        halyard_xds::parse_str(yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    const BASE: &str = "services:\n  - name: a\n    hosts: [a.local]\n    addresses: [127.0.0.9]\n    ports: [{port: 80, targetPort: 8080}, {port: 81, protocol: TCP}]\n    endpoints: [{address: 127.0.0.1}, {address: 127.0.0.2, weight: 2}]\n";

    #[test]
    fn builds_clusters_and_addresses() {
        let s = Snapshot::build(cfg(BASE), None, &jwks()).unwrap();
        let (c, p) = s.by_addr("127.0.0.9:81".parse().unwrap()).unwrap();
        assert_eq!((&*c.name, p.port, p.protocol), ("a", 81, Protocol::Tcp));
        assert_eq!(p.endpoints.len(), 3);
        assert_eq!(c.ports[0].endpoints[0].key().port, 8080);
        assert_eq!(s.cluster_for_host("a.local").unwrap().name.as_ref(), "a");
    }

    #[test]
    fn inbound_mtls_mode_port_over_workload_over_permissive() {
        let s = Snapshot::build(
            cfg("workload:\n  name: w\n  ports: [{port: 1}, {port: 2, mtls: DISABLE}]\n"),
            None,
            &jwks(),
        )
        .unwrap();
        assert_eq!(s.inbound_mtls(Some(1)), MtlsMode::Permissive);
        assert_eq!(s.inbound_mtls(Some(2)), MtlsMode::Disable);
        let s = Snapshot::build(cfg("workload:\n  name: w\n  mtls: STRICT\n  ports: [{port: 1}, {port: 2, mtls: PERMISSIVE}]\n"), None, &jwks()).unwrap();
        assert_eq!(s.inbound_mtls(Some(1)), MtlsMode::Strict);
        assert_eq!(s.inbound_mtls(Some(2)), MtlsMode::Permissive);
        // Unknown port: the first port's mode; no ports at all: the workload's.
        assert_eq!(s.inbound_mtls(Some(9)), MtlsMode::Strict);
        let s =
            Snapshot::build(cfg("workload:\n  name: w\n  mtls: STRICT\n"), None, &jwks()).unwrap();
        assert_eq!(s.inbound_mtls(None), MtlsMode::Strict);
    }

    #[test]
    fn endpoint_identity_and_sidecar_address() {
        let s = Snapshot::build(cfg("services:\n  - name: a\n    ports: [{port: 80}]\n    endpoints: [{address: 10.0.0.1, identity: 'spiffe://td/ns/a/sa/b', sidecarAddress: '127.0.0.1:15006'}, {address: 10.0.0.2}]\n"), None, &jwks()).unwrap();
        let eps = &s.clusters[0].ports[0].endpoints;
        assert!(eps[0].mtls() && !eps[1].mtls());
        assert!(matches!(
            eps[0].key().transport,
            crate::upstream::Transport::Mesh { sidecar: Some(a), .. } if a == "127.0.0.1:15006".parse().unwrap()
        ));
    }

    #[test]
    fn reload_reuses_endpoint_state() {
        let s1 = Snapshot::build(cfg(BASE), None, &jwks()).unwrap();
        let s2 = Snapshot::build(cfg(BASE), Some(&s1), &jwks()).unwrap();
        assert!(Arc::ptr_eq(
            &s1.clusters[0].ports[0].endpoints[0],
            &s2.clusters[0].ports[0].endpoints[0]
        ));
    }
}
