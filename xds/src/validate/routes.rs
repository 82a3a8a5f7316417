//! Checks of HTTP and L4 routes and their destinations.

use super::{find_service, parse_subnet, Checker, RETRY_CONDITIONS};
use crate::locate::Segment;
use crate::{fault, HttpRoute, L4Route, ProxyConfig, RouteDestination};

pub(super) fn check_route(c: &mut Checker, cfg: &ProxyConfig, r: &HttpRoute) {
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

pub(super) fn check_l4_route(c: &mut Checker, cfg: &ProxyConfig, r: &L4Route, tls: bool) {
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

pub(super) fn percent(c: &mut Checker, field: &str, p: Option<f64>) {
    if let Some(p) = p {
        if !(0.0..=100.0).contains(&p) {
            c.fail(field, format!("{p} is not a percentage (0-100)"));
        }
    }
}

pub(super) fn check_destination(c: &mut Checker, cfg: &ProxyConfig, dest: &RouteDestination) {
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
