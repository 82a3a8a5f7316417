//! ServiceEntries (with their WorkloadEntry or inline endpoints) and DestinationRules →
//! the proxies' services, with the policies and subsets of [`super::policy`].

use halyard_xds::{Endpoint, PortTls, Protocol, Service, ServicePort, Subset, UpstreamTls};

use super::{identity, policy, Placement};
use crate::model::networking::{ClientTlsSettings, ServiceEntry, TlsMode, TrafficPolicy};
use crate::model::{exported_to, resolve_host, selects, DestinationRule, Doc, Model};

/// WorkloadEntry annotation naming its sidecar's inbound listener (`IP:port`) for meshes
/// without iptables capture; `halyard-control up` sets the same thing itself.
pub const SIDECAR_ANNOTATION: &str = "halyard.dev/sidecar-address";

/// One service of the mesh with what decides who sees it.
pub(super) struct Entry {
    /// Namespace of the ServiceEntry.
    pub namespace: String,
    export_to: Vec<String>,
    /// The proxy resource (hosts without namespace-relative short names).
    pub service: Service,
}

/// Every service of the model, translated once.
pub(super) struct Registry {
    pub entries: Vec<Entry>,
}

/// Istio port protocol → the proxy's.
pub(super) fn protocol(p: Option<&str>) -> Protocol {
    match p.map(str::to_ascii_uppercase).as_deref() {
        Some("HTTP") | Some("GRPC-WEB") => Protocol::Http,
        Some("HTTP2") => Protocol::Http2,
        Some("GRPC") => Protocol::Grpc,
        // The app's own TLS and other L4 protocols are relayed as bytes.
        Some("TCP" | "TLS" | "HTTPS" | "MONGO" | "MYSQL" | "REDIS") => Protocol::Tcp,
        _ => Protocol::Auto,
    }
}

/// A model duration as a protobuf one (`None` when absent or invalid — the check reports those).
pub(super) fn duration(
    d: Option<&crate::model::values::Duration>,
) -> Option<pbjson_types::Duration> {
    let d = d?.to_std().ok()?;
    Some(pbjson_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

impl Registry {
    pub fn build(model: &Model, placement: &Placement, notes: &mut Vec<String>) -> Self {
        let entries = model
            .service_entries
            .iter()
            .filter_map(|se| entry(model, se, placement, notes))
            .collect();
        Registry { entries }
    }

    /// Services visible from `ns`, with the short names that resolve there.
    pub fn visible_from(&self, ns: &str) -> Vec<halyard_xds::Service> {
        self.entries
            .iter()
            .filter(|e| exported_to(&e.export_to, &e.namespace, ns))
            .map(|e| {
                let mut s = e.service.clone();
                s.hosts = aliases(&s.hosts, ns);
                s
            })
            .collect()
    }

    /// The service named by `host` as written in a resource of namespace `ns`.
    pub fn find(&self, host: &str, ns: &str) -> Option<&Entry> {
        let fqdn = resolve_host(host, ns);
        self.entries.iter().find(|e| {
            e.service
                .hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&fqdn))
        })
    }
}

/// The host names a caller in `ns` may use for a service: each FQDN, and for Kubernetes-style
/// names `name.namespace` everywhere and `name` within the same namespace.
pub(super) fn aliases(hosts: &[String], ns: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(hosts.len() * 3);
    for h in hosts {
        out.push(h.clone());
        if let Some(rest) = h.strip_suffix(".svc.cluster.local") {
            if let Some((name, svc_ns)) = rest.split_once('.') {
                if !svc_ns.contains('.') {
                    out.push(format!("{name}.{svc_ns}"));
                    out.push(format!("{name}.{svc_ns}.svc"));
                    if svc_ns == ns {
                        out.push(name.to_string());
                    }
                }
            }
        }
    }
    out.dedup();
    out
}

/// The DestinationRule for a host in a namespace: its own namespace's first, else any
/// exported to it (Istio's lookup order, without merging).
fn destination_rule<'a>(
    model: &'a Model,
    fqdn: &str,
    ns: &str,
) -> Option<&'a Doc<DestinationRule>> {
    let matching = |d: &&Doc<DestinationRule>| {
        resolve_host(&d.spec.host, &d.meta.namespace).eq_ignore_ascii_case(fqdn)
            && d.spec.workload_selector.is_none()
    };
    model
        .destination_rules
        .iter()
        .filter(matching)
        .find(|d| d.meta.namespace == ns)
        .or_else(|| {
            model
                .destination_rules
                .iter()
                .filter(matching)
                .find(|d| exported_to(&d.spec.export_to, &d.meta.namespace, ns))
        })
}

fn entry(
    model: &Model,
    se: &Doc<ServiceEntry>,
    placement: &Placement,
    notes: &mut Vec<String>,
) -> Option<Entry> {
    let spec = &se.spec;
    let ns = &se.meta.namespace;
    // Short names are the namespace's, as everywhere else in the model.
    let hosts: Vec<String> = spec
        .hosts
        .iter()
        .map(|h| resolve_host(h, ns).to_ascii_lowercase())
        .collect();
    let name = hosts.first()?.clone();
    let td = model.mesh.trust_domain();
    let dr = destination_rule(model, &name, ns);
    let mtls_off = policy::mtls_off(dr.and_then(|d| d.spec.traffic_policy.as_ref()));

    let mut endpoints = Vec::new();
    let selected = spec.workload_selector.as_ref().map(|sel| {
        model
            .workload_entries
            .iter()
            .filter(|we| we.meta.namespace == *ns && selects(&sel.labels, &we.spec.labels))
            .collect::<Vec<_>>()
    });
    match selected {
        // Workloads of the mesh: each has a sidecar proving its service account.
        Some(wes) => {
            for we in wes {
                let identity = identity(td, we);
                let sidecar = placement.sidecar(we);
                endpoints.push(Endpoint {
                    address: we.spec.address.clone(),
                    ports: we.spec.ports.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    labels: we
                        .spec
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    weight: we.spec.weight.unwrap_or(1),
                    identity: if mtls_off { String::new() } else { identity },
                    sidecar_address: match (sidecar, mtls_off) {
                        (Some(a), false) => a.to_string(),
                        _ => String::new(),
                    },
                    ..Default::default()
                });
            }
        }
        // Inline endpoints: outside the mesh, plaintext (their own TLS is relayed).
        None => {
            for e in &spec.endpoints {
                endpoints.push(Endpoint {
                    address: e.address.clone(),
                    ports: e.ports.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    labels: e
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    weight: e.weight.unwrap_or(1),
                    ..Default::default()
                });
            }
        }
    }
    if endpoints.is_empty() && spec.resolution() == crate::model::networking::Resolution::Dns {
        // DNS resolution of the hosts themselves.
        for h in spec.hosts.iter().filter(|h| !h.starts_with('*')) {
            endpoints.push(Endpoint {
                address: h.clone(),
                weight: 1,
                ..Default::default()
            });
        }
    }

    let (tp, mut subsets) = policy::for_rule(dr, &endpoints, notes);
    let rule = dr.map(|d| &d.spec);
    let (tls, port_tls) = origin_tls(rule.and_then(|r| r.traffic_policy.as_ref()), None);
    if let Some(rule) = rule {
        subsets_tls(rule, &mut subsets, &tp, (&tls, &port_tls));
    }

    let service = Service {
        name: name.clone(),
        hosts,
        addresses: spec
            .addresses
            .iter()
            .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
            .cloned()
            .collect(),
        ports: spec
            .ports
            .iter()
            .map(|p| ServicePort {
                port: p.number,
                protocol: protocol(p.protocol.as_deref()) as i32,
                target_port: p.target_port.unwrap_or(0),
                name: p.name.clone(),
            })
            .collect(),
        endpoints,
        load_balancer: tp.load_balancer,
        connect_timeout: tp.connect_timeout,
        idle_timeout: tp.idle_timeout,
        tcp_idle_timeout: tp.tcp_idle_timeout,
        consistent_hash: tp.consistent_hash,
        connection_pool: tp.connection_pool,
        outlier_detection: tp.outlier_detection,
        subsets,
        tls,
        port_tls,
    };
    Some(Entry {
        namespace: ns.clone(),
        export_to: spec.export_to.clone(),
        service,
    })
}

/// Istio client TLS → the proxy's origination settings: SIMPLE and MUTUAL originate TLS
/// (client certificate files only in MUTUAL); other modes do not (`None`).
pub(super) fn upstream_tls(t: &ClientTlsSettings) -> Option<UpstreamTls> {
    let mutual = match t.mode? {
        TlsMode::Simple => false,
        TlsMode::Mutual => true,
        TlsMode::Disable | TlsMode::IstioMutual => return None,
    };
    let file = |f: &Option<String>| f.clone().unwrap_or_default();
    Some(UpstreamTls {
        sni: file(&t.sni),
        ca_certificates: file(&t.ca_certificates),
        client_certificate: if mutual {
            file(&t.client_certificate)
        } else {
            String::new()
        },
        private_key: if mutual {
            file(&t.private_key)
        } else {
            String::new()
        },
        subject_alt_names: t.subject_alt_names.clone(),
        insecure_skip_verify: t.insecure_skip_verify == Some(true),
    })
}

/// TLS origination for all ports, and per port.
type OriginTls = (Option<UpstreamTls>, Vec<PortTls>);

/// TLS for all ports and per port of a policy. Most specific first: a port's own `tls`, the
/// policy's `tls`, then (for a subset, `parent` being the rule's) the rule's per port and for
/// all ports.
pub(super) fn origin_tls(
    tp: Option<&TrafficPolicy>,
    parent: Option<(&Option<UpstreamTls>, &[PortTls])>,
) -> OriginTls {
    let own = tp.and_then(|t| t.tls.as_ref());
    let (all, mut ports) = match (own, parent) {
        (Some(t), _) => (upstream_tls(t), Vec::new()),
        (None, Some((all, ports))) => (all.clone(), ports.to_vec()),
        (None, None) => (None, Vec::new()),
    };
    for pl in tp.map_or(&[][..], |t| &t.port_level_settings[..]) {
        let (Some(port), Some(t)) = (&pl.port, &pl.tls) else {
            continue;
        };
        ports.retain(|p| p.port != port.number);
        ports.push(PortTls {
            port: port.number,
            tls: upstream_tls(t),
        });
    }
    (all, ports)
}

/// Each subset's TLS (its own over the rule's). The proxy takes a subset's policy as
/// complete: a subset with a policy gets its TLS in it; one without gets a policy (the
/// service's) only when its TLS differs from the service's.
fn subsets_tls(
    rule: &crate::model::DestinationRule,
    subsets: &mut [Subset],
    service: &halyard_xds::TrafficPolicy,
    (all, ports): (&Option<UpstreamTls>, &Vec<PortTls>),
) {
    for (sub, out) in rule.subsets.iter().zip(subsets.iter_mut()) {
        let (tls, port_tls) = origin_tls(sub.traffic_policy.as_ref(), Some((all, ports)));
        if out.traffic_policy.is_none() && (&tls, &port_tls) == (all, ports) {
            continue;
        }
        let tp = out.traffic_policy.get_or_insert_with(|| service.clone());
        tp.tls = tls;
        tp.port_tls = port_tls;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DestinationRule;

    fn rule(yaml: &str) -> DestinationRule {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn simple(sni: &str) -> UpstreamTls {
        UpstreamTls {
            sni: sni.into(),
            ca_certificates: "/ca.pem".into(),
            ..Default::default()
        }
    }

    #[test]
    fn modes_and_fields() {
        let t: ClientTlsSettings = serde_yaml::from_str(
            "{mode: MUTUAL, sni: a.test, caCertificates: /ca.pem, clientCertificate: /c.pem, privateKey: /k.pem, subjectAltNames: [a.test], insecureSkipVerify: true}",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let want = UpstreamTls {
            sni: "a.test".into(),
            ca_certificates: "/ca.pem".into(),
            client_certificate: "/c.pem".into(),
            private_key: "/k.pem".into(),
            subject_alt_names: vec!["a.test".into()],
            insecure_skip_verify: true,
        };
        assert_eq!(upstream_tls(&t), Some(want));
        // SIMPLE presents no client certificate; mesh modes originate nothing.
        let t: ClientTlsSettings =
            serde_yaml::from_str("{mode: SIMPLE, clientCertificate: /c.pem, privateKey: /k.pem}")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            upstream_tls(&t).map(|u| u.client_certificate),
            Some(String::new())
        );
        for mode in ["ISTIO_MUTUAL", "DISABLE"] {
            let t: ClientTlsSettings = serde_yaml::from_str(&format!("{{mode: {mode}}}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(upstream_tls(&t), None, "{mode}");
        }
    }

    #[test]
    fn most_specific_block_wins() {
        let dr = rule(
            "host: a
trafficPolicy:
  tls: {mode: SIMPLE, sni: all.test, caCertificates: /ca.pem}
  portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE, sni: p80.test, caCertificates: /ca.pem}
    - port: {number: 81}
      tls: {mode: ISTIO_MUTUAL}
subsets:
  - name: same
    labels: {v: '1'}
  - name: own
    labels: {v: '2'}
    trafficPolicy:
      tls: {mode: SIMPLE, sni: own.test, caCertificates: /ca.pem}
  - name: port
    labels: {v: '3'}
    trafficPolicy:
      portLevelSettings:
        - port: {number: 81}
          tls: {mode: SIMPLE, sni: sub81.test, caCertificates: /ca.pem}
",
        );
        let (all, ports) = origin_tls(dr.traffic_policy.as_ref(), None);
        assert_eq!(all, Some(simple("all.test")));
        let p80 = PortTls {
            port: 80,
            tls: Some(simple("p80.test")),
        };
        assert_eq!(
            ports,
            vec![
                p80.clone(),
                PortTls {
                    port: 81,
                    tls: None
                }
            ]
        );

        let mut subsets: Vec<Subset> = dr
            .subsets
            .iter()
            .map(|s| Subset {
                name: s.name.clone(),
                ..Default::default()
            })
            .collect();
        let service = halyard_xds::TrafficPolicy::default();
        subsets_tls(&dr, &mut subsets, &service, (&all, &ports));
        // Same TLS as the service: no policy of its own.
        assert_eq!(subsets[0].traffic_policy, None);
        // Its own tls replaces the rule's, per port too.
        let own = subsets[1].traffic_policy.clone().unwrap_or_default();
        assert_eq!((own.tls, own.port_tls), (Some(simple("own.test")), vec![]));
        // Its port-level tls over the rule's per port, the rule's for all ports.
        let port = subsets[2].traffic_policy.clone().unwrap_or_default();
        assert_eq!(port.tls, Some(simple("all.test")));
        assert_eq!(
            port.port_tls,
            vec![
                p80,
                PortTls {
                    port: 81,
                    tls: Some(simple("sub81.test"))
                }
            ]
        );
    }
}
