//! The outbound section: a cluster per service and subset, the service addresses, the HTTP
//! route table, TCP and TLS routes and the policy for unknown destinations, with the lookups
//! the outbound planners make in them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use halyard_xds::{self as xds, ProxyConfig};

use super::cluster::{Cluster, ClusterPort, Policy};
use super::reuse::Reuse;
use super::BuildError;
use crate::routes::{
    compile_vhost, host_matches, L4Route, L4View, Route, RouteTable, Source, VirtualHost,
};
use crate::upstream::hash::Ring;

/// Where outbound traffic goes.
#[derive(Debug)]
pub struct Outbound {
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
    /// Outbound policy for unknown destinations.
    pub registry_only: bool,
}

/// (service index, subset name) → cluster index; subset "" is the whole service.
type ClusterIndex<'c> = HashMap<(usize, &'c str), usize>;

/// A cluster to build: its subset name ("" for the whole service), the labels selecting its
/// endpoints (all endpoints without), and its traffic policy.
type Group<'c> = (&'c str, Option<&'c HashMap<String, String>>, Policy);

impl Outbound {
    /// Compiles the services and virtual hosts of `config`; endpoints and breakers come from
    /// `reuse`.
    pub(super) fn build(config: &ProxyConfig, reuse: &mut Reuse<'_>) -> Result<Self, BuildError> {
        let mut out = Self {
            clusters: Vec::with_capacity(config.services.len()),
            routes: RouteTable::default(),
            by_addr: HashMap::new(),
            tcp_routes: HashMap::new(),
            tls_routes: Vec::new(),
            registry_only: config
                .outbound_traffic_policy
                .as_ref()
                .is_some_and(|p| p.mode() == xds::outbound_traffic_policy::Mode::RegistryOnly),
        };
        let mut index = ClusterIndex::new();
        for (si, svc) in config.services.iter().enumerate() {
            out.add_service(si, svc, reuse, &mut index)?;
        }
        out.add_routes(config, &index)?;
        Ok(out)
    }

    /// Adds the clusters of service `si` (the whole service, then its subsets) and its
    /// addresses.
    fn add_service<'c>(
        &mut self,
        si: usize,
        svc: &'c xds::Service,
        reuse: &mut Reuse<'_>,
        index: &mut ClusterIndex<'c>,
    ) -> Result<(), BuildError> {
        let service: Arc<str> = svc.name.as_str().into();
        for (subset, labels, policy) in groups(svc, si)? {
            let name: Arc<str> = if subset.is_empty() {
                service.clone()
            } else {
                format!("{}|{subset}", svc.name).into()
            };
            let ci = self.clusters.len();
            if subset.is_empty() {
                self.add_addresses(svc, ci);
            }
            let cluster = cluster(svc, &service, name, labels, policy, reuse)?;
            index.insert((si, subset), ci);
            self.clusters.push(Arc::new(cluster));
        }
        Ok(())
    }

    /// Maps each VIP:port of `svc` to cluster `ci`, unless an earlier service has it.
    fn add_addresses(&mut self, svc: &xds::Service, ci: usize) {
        for (pi, p) in svc.ports.iter().enumerate() {
            for a in &svc.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    self.by_addr
                        .entry(SocketAddr::new(ip, p.port as u16))
                        .or_insert((ci, pi));
                }
            }
        }
    }

    /// Compiles the virtual hosts' HTTP, TLS and TCP routes, then gives each service's hosts
    /// a catch-all route to it (after those of the virtual hosts).
    fn add_routes(
        &mut self,
        config: &ProxyConfig,
        index: &ClusterIndex<'_>,
    ) -> Result<(), BuildError> {
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
            index.get(&(si, subset)).copied()
        };
        let no_labels = HashMap::new();
        let source = Source {
            labels: config.workload.as_ref().map_or(&no_labels, |w| &w.labels),
            namespace: config
                .workload
                .as_ref()
                .map_or("", |w| w.namespace.as_str()),
        };
        for vh in &config.virtual_hosts {
            let http = compile_vhost(vh, source, cluster_of)?;
            // A host with only TCP or TLS routes keeps its service's default HTTP route.
            if !http.routes.is_empty() {
                self.routes.add(&vh.hosts, http);
            }
            if !vh.tls_routes.is_empty() {
                let compiled =
                    L4Route::compile_all(&vh.name, "tls", &vh.tls_routes, source, &cluster_of)?;
                let hosts = vh.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
                self.tls_routes.push((hosts, compiled));
            }
            if vh.tcp_routes.is_empty() {
                continue;
            }
            let compiled =
                L4Route::compile_all(&vh.name, "tcp", &vh.tcp_routes, source, &cluster_of)?;
            // The first virtual host naming a service owns its TCP routes (as for HTTP).
            for h in &vh.hosts {
                if let Some(ci) = cluster_of(h, "") {
                    self.tcp_routes
                        .entry(ci)
                        .or_insert_with(|| compiled.clone());
                }
            }
        }
        for (si, svc) in config.services.iter().enumerate() {
            let name: Arc<str> = svc.name.clone().into();
            let Some(&ci) = index.get(&(si, "")) else {
                continue;
            };
            let vhost = VirtualHost {
                name: name.clone(),
                routes: vec![Route::catch_all(name, ci)],
            };
            self.routes.add(&svc.hosts, vhost);
        }
        Ok(())
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
}

/// The clusters service `si` makes: the whole service, then each subset (with its own
/// traffic policy, else the service's).
fn groups(svc: &xds::Service, si: usize) -> Result<Vec<Group<'_>>, BuildError> {
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
    Ok(groups)
}

/// One cluster of `svc`, named `name`: per port, the endpoints `labels` select.
fn cluster(
    svc: &xds::Service,
    service: &Arc<str>,
    name: Arc<str>,
    labels: Option<&HashMap<String, String>>,
    policy: Policy,
    reuse: &mut Reuse<'_>,
) -> Result<Cluster, BuildError> {
    let ports = svc
        .ports
        .iter()
        .map(|p| cluster_port(svc, p, labels, &policy, reuse))
        .collect::<Result<Vec<_>, _>>()?;
    let breaker = reuse.breaker(&name);
    Ok(Cluster {
        service: service.clone(),
        name,
        ports,
        lb: policy.lb,
        hash: policy.hash,
        rr: AtomicUsize::new(0),
        tcp_idle_timeout: policy.tcp_idle_timeout,
        limits: policy.limits,
        breaker,
        outlier: policy.outlier,
    })
}

/// Port `p` of a cluster of `svc`: the endpoints `labels` select at the target port,
/// repeated by weight, and the hash ring over them when the policy hashes.
fn cluster_port(
    svc: &xds::Service,
    p: &xds::ServicePort,
    labels: Option<&HashMap<String, String>>,
    policy: &Policy,
    reuse: &mut Reuse<'_>,
) -> Result<ClusterPort, BuildError> {
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
        let u = reuse.upstream(policy.endpoint_key(svc, e, p, target)?);
        // Weights repeat an endpoint in the pick list (bounded to keep it small).
        for k in 0..e.weight.clamp(1, 16) {
            if policy.hash.is_some() {
                ids.push(format!("{}#{k}", u.authority));
            }
            endpoints.push(u.clone());
        }
    }
    let ring = policy.hash.as_ref().map(|_| {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Ring::new(&ids, &vec![1; ids.len()], policy.points_per_endpoint)
    });
    Ok(ClusterPort {
        port,
        protocol: p.protocol(),
        endpoints,
        ring,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::{cfg, BASE};
    use halyard_xds::Protocol;

    fn outbound(yaml: &str) -> Outbound {
        Outbound::build(&cfg(yaml), &mut Reuse::new(None)).unwrap()
    }

    #[test]
    fn builds_clusters_and_addresses() {
        let s = outbound(BASE);
        let (c, p) = s.by_addr("127.0.0.9:81".parse().unwrap()).unwrap();
        assert_eq!((&*c.name, p.port, p.protocol), ("a", 81, Protocol::Tcp));
        assert_eq!(p.endpoints.len(), 3);
        assert_eq!(c.ports[0].endpoints[0].key().port, 8080);
        assert_eq!(s.cluster_for_host("a.local").unwrap().name.as_ref(), "a");
    }

    #[test]
    fn endpoint_identity_and_sidecar_address() {
        let s = outbound("services:\n  - name: a\n    ports: [{port: 80}]\n    endpoints: [{address: 10.0.0.1, identity: 'spiffe://td/ns/a/sa/b', sidecarAddress: '127.0.0.1:15006'}, {address: 10.0.0.2}]\n");
        let eps = &s.clusters[0].ports[0].endpoints;
        assert!(eps[0].mtls() && !eps[1].mtls());
        assert!(matches!(
            eps[0].key().transport,
            crate::upstream::Transport::Mesh { sidecar: Some(a), .. } if a == "127.0.0.1:15006".parse().unwrap()
        ));
    }

    #[test]
    fn a_cluster_per_service_and_subset_with_the_endpoints_its_labels_select() {
        let s = outbound("services:\n  - name: a\n    hosts: [a.local]\n    ports: [{port: 80}]\n    endpoints: [{address: 10.0.0.1, labels: {v: '1'}}, {address: 10.0.0.2, labels: {v: '2'}}, {address: 10.0.0.3, labels: {v: '2'}, weight: 3}]\n    subsets: [{name: one, labels: {v: '1'}}, {name: two, labels: {v: '2'}}, {name: none, labels: {v: '3'}}]\n  - name: b\n    ports: [{port: 90}]\n    endpoints: [{address: 10.0.0.9}]\n");
        // (cluster name, service, endpoints of its first port, repeated by weight)
        let cases = [
            ("a", "a", vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
            ("a|one", "a", vec!["10.0.0.1:80"]),
            ("a|two", "a", vec!["10.0.0.2:80", "10.0.0.3:80"]),
            ("a|none", "a", vec![]),
            ("b", "b", vec!["10.0.0.9:90"]),
        ];
        assert_eq!(s.clusters.len(), cases.len());
        for (c, (name, service, endpoints)) in s.clusters.iter().zip(cases) {
            assert_eq!((&*c.name, &*c.service), (name, service));
            let mut got: Vec<&str> = c.ports[0].endpoints.iter().map(|e| &*e.authority).collect();
            got.dedup();
            assert_eq!(got, endpoints, "{name}");
        }
        assert_eq!(s.clusters[0].ports[0].endpoints.len(), 5);
    }

    #[test]
    fn service_addresses_first_service_wins() {
        let s = outbound("services:\n  - name: a\n    addresses: [240.0.0.1]\n    ports: [{port: 80}, {port: 81}]\n  - name: b\n    addresses: [240.0.0.1, 240.0.0.2]\n    ports: [{port: 81}, {port: 82}]\n");
        // (destination, cluster and port it belongs to)
        let cases = [
            ("240.0.0.1:80", Some(("a", 80))),
            ("240.0.0.1:81", Some(("a", 81))),
            ("240.0.0.1:82", Some(("b", 82))),
            ("240.0.0.2:81", Some(("b", 81))),
            ("240.0.0.2:80", None),
            ("240.0.0.3:80", None),
        ];
        for (dst, want) in cases {
            let got = s
                .by_addr(dst.parse().unwrap())
                .map(|(c, p)| (&*c.name, p.port));
            assert_eq!(got, want, "{dst}");
        }
    }

    #[test]
    fn unknown_destinations_are_refused_only_with_registry_only() {
        let cases = [
            ("version: t\n", false),
            ("outboundTrafficPolicy: {mode: ALLOW_ANY}\n", false),
            ("outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n", true),
        ];
        for (yaml, registry_only) in cases {
            assert_eq!(outbound(yaml).registry_only, registry_only, "{yaml}");
        }
    }

    #[test]
    fn tcp_target_tls_routes_then_tcp_routes_then_the_service() {
        let s = outbound("services:\n  - name: db\n    hosts: [db.local]\n    addresses: [240.0.0.2]\n    ports: [{port: 9000, protocol: TCP}, {port: 9001, protocol: TCP}]\n  - name: canary\n    ports: [{port: 9000, protocol: TCP}]\n  - name: ext\n    hosts: [ext.example.com]\n    ports: [{port: 443, protocol: TCP}]\nvirtualHosts:\n  - name: db\n    hosts: [db.local]\n    tcpRoutes: [{name: c, match: [{port: 9001}], destinations: [{service: canary, port: 9000}]}]\n  - name: tls\n    hosts: ['*.example.com']\n    tlsRoutes: [{name: t, match: [{sniHosts: [a.example.com]}], destinations: [{service: db, port: 9001}]}]\n");
        let dst = |a: &str| Some(a.parse::<SocketAddr>().unwrap());
        // (destination, server name, cluster and port)
        let cases = [
            (dst("240.0.0.2:9000"), None, Some(("db", 9000))),
            (dst("240.0.0.2:9001"), None, Some(("canary", 9000))),
            (
                dst("240.0.0.2:9000"),
                Some("a.example.com"),
                Some(("db", 9001)),
            ),
            (
                dst("240.0.0.2:9000"),
                Some("b.example.com"),
                Some(("db", 9000)),
            ),
            (None, Some("ext.example.com"), Some(("ext", 443))),
            (None, Some("nowhere.example.org"), None),
            (dst("240.0.0.9:9000"), None, None),
        ];
        for (dst, sni, want) in cases {
            let got = s.tcp_target(dst, sni, 0).map(|(c, p)| (&*c.name, p.port));
            assert_eq!(got, want, "{dst:?} {sni:?}");
        }
    }
}
