//! Semantic checks on a parsed `ProxyConfig`: what serde cannot express.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

mod routes;
mod services;

use routes::{check_l4_route, check_route};
use services::check_service;

use crate::locate::Segment;
use crate::{ProxyConfig, Service, Settings};

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

/// Finds a service by name or by one of its hosts.
pub fn find_service<'a>(cfg: &'a ProxyConfig, key: &str) -> Option<&'a Service> {
    cfg.services.iter().find(|s| s.name == key).or_else(|| {
        cfg.services
            .iter()
            .find(|s| s.hosts.iter().any(|h| h == key))
    })
}

#[cfg(test)]
mod tests;
