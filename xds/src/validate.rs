//! Semantic checks on a parsed `ProxyConfig`: what serde cannot express.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::locate::Segment;
use crate::{
    consistent_hash, fault, ConsistentHash, HttpRoute, L4Route, OutlierDetection, PortTls,
    ProxyConfig, RouteDestination, Service, Settings, UpstreamTls,
};

/// One rule broken by a configuration, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the field, e.g. `services[1].ports[0].port`.
    pub path: Vec<Segment>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.path.iter().enumerate() {
            match seg {
                Segment::Field(name) if i == 0 => write!(f, "{name}")?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Collects errors under a growing field path.
struct Checker {
    path: Vec<Segment>,
    errors: Vec<ValidationError>,
}

impl Checker {
    fn at<R>(&mut self, seg: Segment, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(seg);
        let r = f(self);
        self.path.pop();
        r
    }
    fn field<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.at(Segment::Field(name.to_string()), f)
    }
    fn fail(&mut self, field: &str, message: impl Into<String>) {
        let mut path = self.path.clone();
        if !field.is_empty() {
            path.push(Segment::Field(field.to_string()));
        }
        self.errors.push(ValidationError {
            path,
            message: message.into(),
        });
    }
    fn socket_addr(&mut self, field: &str, value: &str) {
        if !value.is_empty() && value.parse::<SocketAddr>().is_err() {
            self.fail(field, format!("`{value}` is not an IP:port address"));
        }
    }
    fn port(&mut self, field: &str, value: u32, required: bool) {
        if (required && value == 0) || value > 65535 {
            self.fail(field, format!("{value} is not a port number (1-65535)"));
        }
    }
}

/// Whether `host` is a usable host pattern: a DNS name, optionally with a leading `*.`, or `*`.
fn valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if host == "*" {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Checks every rule and returns all violations (empty when the config is usable).
pub fn validate(cfg: &ProxyConfig) -> Vec<ValidationError> {
    let mut c = Checker {
        path: Vec::new(),
        errors: Vec::new(),
    };
    if let Some(l) = &cfg.listeners {
        c.field("listeners", |c| {
            c.socket_addr("outbound", &l.outbound);
            c.socket_addr("inbound", &l.inbound);
            c.socket_addr("admin", &l.admin);
            c.socket_addr("stats", &l.stats);
        });
    }
    if let Some(w) = &cfg.workload {
        c.field("workload", |c| {
            let mut seen = HashSet::new();
            for (i, p) in w.ports.iter().enumerate() {
                c.field("ports", |c| {
                    c.at(Segment::Index(i), |c| {
                        c.port("port", p.port, true);
                        if !seen.insert(p.port) {
                            c.fail("port", format!("port {} is listed twice", p.port));
                        }
                        c.socket_addr("appAddress", &p.app_address);
                    })
                });
            }
        });
    }
    if let Some(st) = &cfg.settings {
        c.field("settings", |c| check_settings(c, st));
    }
    let mut names = HashSet::new();
    for (i, svc) in cfg.services.iter().enumerate() {
        c.field("services", |c| {
            c.at(Segment::Index(i), |c| check_service(c, svc, &mut names))
        });
    }
    for (i, vh) in cfg.virtual_hosts.iter().enumerate() {
        c.field("virtualHosts", |c| {
            c.at(Segment::Index(i), |c| {
                if vh.hosts.is_empty() {
                    c.fail("hosts", "at least one host is required");
                }
                for (j, h) in vh.hosts.iter().enumerate() {
                    if !valid_host(h) {
                        c.field("hosts", |c| {
                            c.at(Segment::Index(j), |c| {
                                c.fail("", format!("`{h}` is not a host name"))
                            })
                        });
                    }
                }
                for (j, r) in vh.routes.iter().enumerate() {
                    c.field("routes", |c| {
                        c.at(Segment::Index(j), |c| check_route(c, cfg, r))
                    });
                }
                for (field, routes, tls) in [
                    ("tcpRoutes", &vh.tcp_routes, false),
                    ("tlsRoutes", &vh.tls_routes, true),
                ] {
                    for (j, r) in routes.iter().enumerate() {
                        c.field(field, |c| {
                            c.at(Segment::Index(j), |c| check_l4_route(c, cfg, r, tls))
                        });
                    }
                }
            })
        });
    }
    c.errors
}

/// Fields a JSON access-log line may carry (Envoy's and Istio's names), in the order written
/// when the config names none.
pub const ACCESS_LOG_FIELDS: &[&str] = &[
    "start_time",
    "listener",
    "route_name",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "upstream_transport_failure_reason",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_request_attempt_count",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_cluster",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "downstream_peer_uri_san",
    "upstream_peer_uri_san",
    "request_principal",
    "rbac_policy",
    "trace_id",
];

fn check_settings(c: &mut Checker, st: &Settings) {
    for (i, f) in st.access_log_fields.iter().enumerate() {
        if !ACCESS_LOG_FIELDS.contains(&f.as_str()) {
            c.field("accessLogFields", |c| {
                c.at(Segment::Index(i), |c| {
                    c.fail(
                        "",
                        format!(
                            "unknown access log field `{f}` (one of {})",
                            ACCESS_LOG_FIELDS.join(", ")
                        ),
                    )
                })
            });
        }
    }
    if let Some(t) = &st.tracing {
        c.field("tracing", |c| {
            if let Some(p) = t.sampling {
                if !(0.0..=100.0).contains(&p) {
                    c.fail("sampling", format!("{p} is not a percentage (0-100)"));
                }
            }
            match t.otlp_endpoint.strip_prefix("http://") {
                Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
                _ => c.fail(
                    "otlpEndpoint",
                    format!(
                        "`{}` is not an http://host:port collector address",
                        t.otlp_endpoint
                    ),
                ),
            }
        });
    }
}

/// Retry conditions a route may name (besides HTTP status codes such as `503`).
pub const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn check_route(c: &mut Checker, cfg: &ProxyConfig, r: &HttpRoute) {
    match (
        r.route.is_some(),
        !r.destinations.is_empty(),
        r.redirect.is_some(),
    ) {
        (false, false, false) => c.fail(
            "route",
            "a destination (route, destinations) or a redirect is required",
        ),
        (_, _, true) if r.route.is_some() || !r.destinations.is_empty() => {
            c.fail("redirect", "a route either redirects or forwards, not both")
        }
        _ => {}
    }
    if let Some(dest) = &r.route {
        c.field("route", |c| check_destination(c, cfg, dest));
    }
    for (k, d) in r.destinations.iter().enumerate() {
        c.field("destinations", |c| {
            c.at(Segment::Index(k), |c| check_destination(c, cfg, d))
        });
    }
    for (k, m) in r.mirrors.iter().enumerate() {
        c.field("mirrors", |c| {
            c.at(Segment::Index(k), |c| {
                match &m.destination {
                    Some(d) => c.field("destination", |c| check_destination(c, cfg, d)),
                    None => c.fail("destination", "a mirror needs a destination"),
                }
                percent(c, "percent", m.percent);
            })
        });
    }
    for (k, m) in r.r#match.iter().enumerate() {
        c.field("match", |c| {
            c.at(Segment::Index(k), |c| {
                for (field, sm) in [
                    ("uri", &m.uri),
                    ("method", &m.method),
                    ("authority", &m.authority),
                    ("scheme", &m.scheme),
                ] {
                    if sm.as_ref().is_some_and(|u| u.match_type.is_none()) {
                        c.fail(field, "set `exact`, `prefix` or `regex`");
                    }
                }
                c.port("port", m.port, false);
            })
        });
    }
    if let Some(redirect) = &r.redirect {
        c.field("redirect", |c| {
            c.port("port", redirect.port, false);
            if !matches!(redirect.code, 0 | 301 | 302 | 303 | 307 | 308) {
                c.fail(
                    "code",
                    format!(
                        "{} is not a redirect status (301, 302, 303, 307, 308)",
                        redirect.code
                    ),
                );
            }
            if !matches!(redirect.scheme.as_str(), "" | "http" | "https") {
                c.fail(
                    "scheme",
                    format!("`{}` is not http or https", redirect.scheme),
                );
            }
        });
    }
    if let Some(retries) = &r.retries {
        c.field("retries", |c| {
            for (k, cond) in retries.retry_on.iter().enumerate() {
                let cond = cond.trim();
                let known = RETRY_CONDITIONS.contains(&cond)
                    || cond.parse::<u16>().is_ok_and(|s| (100..600).contains(&s));
                if !known {
                    c.field("retryOn", |c| {
                        c.at(Segment::Index(k), |c| {
                            c.fail("", format!("unknown retry condition `{cond}`"))
                        })
                    });
                }
            }
        });
    }
    if let Some(fault) = &r.fault {
        c.field("fault", |c| {
            if let Some(d) = &fault.delay {
                c.field("delay", |c| {
                    percent(c, "percent", d.percent);
                    if d.fixed_delay.is_none() {
                        c.fail("fixedDelay", "a delay needs fixedDelay");
                    }
                });
            }
            if let Some(a) = &fault.abort {
                c.field("abort", |c| {
                    percent(c, "percent", a.percent);
                    match a.error {
                        None => c.fail("httpStatus", "an abort needs httpStatus or grpcStatus"),
                        Some(fault::abort::Error::HttpStatus(s)) if !(200..600).contains(&s) => {
                            c.fail("httpStatus", format!("{s} is not an HTTP status (200-599)"))
                        }
                        Some(fault::abort::Error::GrpcStatus(s)) if s > 16 => c.fail(
                            "grpcStatus",
                            format!("{s} is not a gRPC status code (0-16)"),
                        ),
                        Some(_) => {}
                    }
                });
            }
        });
    }
}

fn check_l4_route(c: &mut Checker, cfg: &ProxyConfig, r: &L4Route, tls: bool) {
    if r.destinations.is_empty() {
        c.fail("destinations", "at least one destination is required");
    }
    for (k, d) in r.destinations.iter().enumerate() {
        c.field("destinations", |c| {
            c.at(Segment::Index(k), |c| check_destination(c, cfg, d))
        });
    }
    for (k, m) in r.r#match.iter().enumerate() {
        c.field("match", |c| {
            c.at(Segment::Index(k), |c| {
                c.port("port", m.port, false);
                for (n, subnet) in m.destination_subnets.iter().enumerate() {
                    if parse_subnet(subnet).is_none() {
                        c.field("destinationSubnets", |c| {
                            c.at(Segment::Index(n), |c| {
                                c.fail("", format!("`{subnet}` is not an IP address or CIDR block"))
                            })
                        });
                    }
                }
                if tls && m.sni_hosts.is_empty() {
                    c.fail("sniHosts", "a TLS route match needs sniHosts");
                }
            })
        });
    }
}

/// Parses `IP` or `IP/prefix`.
pub fn parse_subnet(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
        None => {
            let ip = s.parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn percent(c: &mut Checker, field: &str, p: Option<f64>) {
    if let Some(p) = p {
        if !(0.0..=100.0).contains(&p) {
            c.fail(field, format!("{p} is not a percentage (0-100)"));
        }
    }
}

fn check_destination(c: &mut Checker, cfg: &ProxyConfig, dest: &RouteDestination) {
    match find_service(cfg, &dest.service) {
        None => c.fail(
            "service",
            format!("no service named or hosting `{}`", dest.service),
        ),
        Some(svc) => {
            if dest.port != 0 && !svc.ports.iter().any(|p| p.port == dest.port) {
                c.fail(
                    "port",
                    format!("service `{}` has no port {}", svc.name, dest.port),
                );
            }
            if !dest.subset.is_empty() && !svc.subsets.iter().any(|s| s.name == dest.subset) {
                c.fail(
                    "subset",
                    format!("service `{}` has no subset `{}`", svc.name, dest.subset),
                );
            }
        }
    }
}

fn check_service(c: &mut Checker, svc: &Service, names: &mut HashSet<String>) {
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

fn check_policy(c: &mut Checker, hash: Option<&ConsistentHash>, od: Option<&OutlierDetection>) {
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
fn check_origin(c: &mut Checker, svc: &Service, tls: Option<&UpstreamTls>, ports: &[PortTls]) {
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

fn check_upstream_tls(c: &mut Checker, t: &UpstreamTls) {
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
fn valid_spiffe(id: &str) -> bool {
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

/// Finds a service by name or by one of its hosts.
pub fn find_service<'a>(cfg: &'a ProxyConfig, key: &str) -> Option<&'a Service> {
    cfg.services.iter().find(|s| s.name == key).or_else(|| {
        cfg.services
            .iter()
            .find(|s| s.hosts.iter().any(|h| h == key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn errors(yaml: &str) -> Vec<String> {
        let cfg: ProxyConfig = serde_yaml::from_str(yaml).unwrap();
        validate(&cfg).iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn clean_config_passes() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/static/proxy.yaml"),
        )
        .unwrap();
        assert!(errors(&text).is_empty(), "{:?}", errors(&text));
    }

    #[test]
    fn dangling_route_and_bad_values() {
        let e = errors(
            "listeners: {admin: 'nope'}\nservices:\n  - name: a\n    ports: [{port: 70000}]\n    addresses: [1.2.3]\n\
             virtualHosts:\n  - hosts: [x.local]\n    routes: [{route: {service: missing}}]\n",
        );
        let joined = e.join("\n");
        for want in [
            "listeners.admin: `nope` is not an IP:port address",
            "services[0].ports[0].port: 70000 is not a port number",
            "services[0].addresses[0]: `1.2.3` is not an IP address",
            "virtualHosts[0].routes[0].route.service: no service named or hosting `missing`",
        ] {
            assert!(joined.contains(want), "missing {want:?} in\n{joined}");
        }
    }

    #[test]
    fn duplicate_service() {
        let e = errors(
            "services:\n  - {name: a, ports: [{port: 1}]}\n  - {name: a, ports: [{port: 1}]}\n",
        );
        assert_eq!(e, vec!["services[1].name: service `a` is defined twice"]);
    }

    #[test]
    fn upstream_tls_settings() {
        let base = "services:\n  - name: a\n    ports: [{port: 443}]\n";
        let ok = errors(&format!("{base}    tls: {{sni: a.example, caCertificates: /ca.pem, clientCertificate: /c.pem, privateKey: /k.pem, subjectAltNames: [a.example, 10.0.0.1, 'spiffe://td/ns/x/sa/y']}}\n    portTls: [{{port: 443}}]\n"));
        assert!(ok.is_empty(), "{ok:?}");
        let e = errors(&format!("{base}    tls: {{sni: '*.x', clientCertificate: /c.pem, subjectAltNames: ['a b']}}\n    portTls: [{{port: 80}}]\n"));
        let joined = e.join("\n");
        for want in [
            "services[0].tls.sni: `*.x` is not a DNS name",
            "services[0].tls.privateKey: clientCertificate needs privateKey",
            "services[0].tls.subjectAltNames[0]: `a b` is not",
            "services[0].portTls[0].port: service `a` has no port 80",
        ] {
            assert!(joined.contains(want), "missing {want:?} in\n{joined}");
        }
    }

    #[test]
    fn endpoint_identity_must_be_spiffe() {
        let ok = errors("services:\n  - name: a\n    ports: [{port: 1}]\n    endpoints: [{address: 127.0.0.1, identity: 'spiffe://cluster.local/ns/a/sa/b'}]\n");
        assert!(ok.is_empty(), "{ok:?}");
        let e = errors("services:\n  - name: a\n    ports: [{port: 1}]\n    endpoints: [{address: 127.0.0.1, identity: 'spiffe://Bad/ns//x'}]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("services[0].endpoints[0].identity:"),
            "{e:?}"
        );
        let e = errors("services:\n  - name: a\n    ports: [{port: 1}]\n    endpoints: [{address: 127.0.0.1, sidecarAddress: '127.0.0.1:15006'}]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("needs `identity`"), "{e:?}");
    }
}
