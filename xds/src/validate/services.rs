//! Checks of services: ports, endpoints, traffic policy and TLS origination.

use std::collections::HashSet;
use std::net::IpAddr;

use super::{valid_host, Checker};
use crate::locate::Segment;
use crate::{consistent_hash, ConsistentHash, OutlierDetection, PortTls, Service, UpstreamTls};

pub(super) fn check_service(c: &mut Checker, svc: &Service, names: &mut HashSet<String>) {
    if svc.name.is_empty() {
        c.fail("name", "a service needs a name");
    } else if !names.insert(svc.name.clone()) {
        c.fail("name", format!("service `{}` is defined twice", svc.name));
    }
    for (j, h) in svc.hosts.iter().enumerate() {
        if !valid_host(h) {
            c.field("hosts", |c| {
                c.at(Segment::Index(j), |c| {
                    c.fail("", format!("`{h}` is not a host name"))
                })
            });
        }
    }
    for (j, a) in svc.addresses.iter().enumerate() {
        if a.parse::<IpAddr>().is_err() {
            c.field("addresses", |c| {
                c.at(Segment::Index(j), |c| {
                    c.fail("", format!("`{a}` is not an IP address"))
                })
            });
        }
    }
    if svc.ports.is_empty() {
        c.fail("ports", "a service needs at least one port");
    }
    let mut seen = HashSet::new();
    for (j, p) in svc.ports.iter().enumerate() {
        c.field("ports", |c| {
            c.at(Segment::Index(j), |c| {
                c.port("port", p.port, true);
                c.port("targetPort", p.target_port, false);
                if !seen.insert(p.port) {
                    c.fail("port", format!("port {} is listed twice", p.port));
                }
            })
        });
    }
    let mut subsets = HashSet::new();
    for (j, sub) in svc.subsets.iter().enumerate() {
        c.field("subsets", |c| {
            c.at(Segment::Index(j), |c| {
                if sub.name.is_empty() {
                    c.fail("name", "a subset needs a name");
                } else if !subsets.insert(sub.name.as_str()) {
                    c.fail("name", format!("subset `{}` is defined twice", sub.name));
                }
                if let Some(p) = &sub.traffic_policy {
                    c.field("trafficPolicy", |c| {
                        check_policy(c, p.consistent_hash.as_ref(), p.outlier_detection.as_ref());
                        check_origin(c, svc, p.tls.as_ref(), &p.port_tls);
                    });
                }
            })
        });
    }
    check_policy(
        c,
        svc.consistent_hash.as_ref(),
        svc.outlier_detection.as_ref(),
    );
    check_origin(c, svc, svc.tls.as_ref(), &svc.port_tls);
    for (j, e) in svc.endpoints.iter().enumerate() {
        c.field("endpoints", |c| {
            c.at(Segment::Index(j), |c| {
                if e.address.is_empty() {
                    c.fail("address", "an endpoint needs an address");
                } else if e.address.parse::<IpAddr>().is_err() && !valid_host(&e.address) {
                    c.fail(
                        "address",
                        format!("`{}` is neither an IP address nor a host name", e.address),
                    );
                }
                c.port("port", e.port, false);
                for (name, port) in &e.ports {
                    c.port(&format!("ports.{name}"), *port, true);
                }
                if !e.identity.is_empty() && !valid_spiffe(&e.identity) {
                    c.fail(
                        "identity",
                        format!(
                            "`{}` is not a SPIFFE ID (spiffe://trust-domain/path)",
                            e.identity
                        ),
                    );
                }
                c.socket_addr("sidecarAddress", &e.sidecar_address);
                if !e.sidecar_address.is_empty() && e.identity.is_empty() {
                    c.fail(
                        "sidecarAddress",
                        "needs `identity`: a sidecar is reached only over mutual TLS",
                    );
                }
            })
        });
    }
}

pub(super) fn check_policy(
    c: &mut Checker,
    hash: Option<&ConsistentHash>,
    od: Option<&OutlierDetection>,
) {
    if let Some(h) = hash {
        c.field("consistentHash", |c| match &h.key {
            None => c.fail(
                "",
                "name the hash key: header, cookie, sourceIp or queryParameter",
            ),
            Some(consistent_hash::Key::Header(n) | consistent_hash::Key::QueryParameter(n))
                if n.is_empty() =>
            {
                c.fail("", "the hash key needs a name")
            }
            Some(consistent_hash::Key::Cookie(k)) if k.name.is_empty() => {
                c.fail("cookie.name", "the hash cookie needs a name")
            }
            _ => {}
        });
    }
    if let Some(od) = od {
        c.field("outlierDetection", |c| {
            if od.max_ejection_percent.is_some_and(|p| p > 100) {
                c.fail("maxEjectionPercent", "must be 0-100");
            }
            if od.min_health_percent > 100 {
                c.fail("minHealthPercent", "must be 0-100");
            }
        });
    }
}

/// TLS origination settings, for all ports and per port (ports of the service, once each).
pub(super) fn check_origin(
    c: &mut Checker,
    svc: &Service,
    tls: Option<&UpstreamTls>,
    ports: &[PortTls],
) {
    if let Some(t) = tls {
        c.field("tls", |c| check_upstream_tls(c, t));
    }
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        c.field("portTls", |c| {
            c.at(Segment::Index(i), |c| {
                if !svc.ports.iter().any(|sp| sp.port == p.port) {
                    c.fail(
                        "port",
                        format!("service `{}` has no port {}", svc.name, p.port),
                    );
                } else if !seen.insert(p.port) {
                    c.fail("port", format!("port {} has TLS settings twice", p.port));
                }
                if let Some(t) = &p.tls {
                    c.field("tls", |c| check_upstream_tls(c, t));
                }
            })
        });
    }
}

pub(super) fn check_upstream_tls(c: &mut Checker, t: &UpstreamTls) {
    if !t.sni.is_empty()
        && t.sni.parse::<IpAddr>().is_err()
        && (t.sni.starts_with('*') || !valid_host(&t.sni))
    {
        c.fail(
            "sni",
            format!("`{}` is not a DNS name or IP address", t.sni),
        );
    }
    match (t.client_certificate.is_empty(), t.private_key.is_empty()) {
        (false, true) => c.fail("privateKey", "clientCertificate needs privateKey"),
        (true, false) => c.fail("clientCertificate", "privateKey needs clientCertificate"),
        _ => {}
    }
    for (i, san) in t.subject_alt_names.iter().enumerate() {
        let ok = if san.starts_with("spiffe://") {
            valid_spiffe(san)
        } else {
            san.parse::<IpAddr>().is_ok() || (!san.starts_with('*') && valid_host(san))
        };
        if !ok {
            c.field("subjectAltNames", |c| {
                c.at(Segment::Index(i), |c| {
                    c.fail(
                        "",
                        format!("`{san}` is not a DNS name, IP address or spiffe:// URI"),
                    )
                })
            });
        }
    }
}

/// A light SPIFFE ID check (the proxy parses it fully): scheme, trust domain, path.
pub(super) fn valid_spiffe(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (td, path) = match rest.split_once('/') {
        Some((td, path)) => (td, Some(path)),
        None => (rest, None),
    };
    !td.is_empty()
        && td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        && path.is_none_or(|path| {
            path.split('/').all(|s| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            })
        })
}
