//! TCP and TLS routes: connections to a service are sent, by port, destination subnet and
//! (for TLS, read from the ClientHello without terminating it) server name, to weighted
//! destinations (Istio VirtualService `tcp` and `tls`).

use std::net::IpAddr;

use halyard_xds as xds;

use super::action::{ActionError, Destination, Split};
use super::{applies_to_source, RouteError, Source};

/// One compiled TCP route.
#[derive(Debug, Clone)]
pub struct L4Route {
    matches: Vec<L4Match>,
    /// Where matching connections go.
    pub split: Split,
}

#[derive(Debug, Clone)]
struct L4Match {
    port: Option<u16>,
    subnets: Vec<(IpAddr, u8)>,
    /// Lower-case server names, `*.suffix` wildcards allowed.
    sni_hosts: Vec<Box<str>>,
}

/// What a connection offers to L4 matching.
#[derive(Debug, Clone, Copy)]
pub struct L4View<'a> {
    /// The service port addressed.
    pub port: Option<u16>,
    /// The original destination address, when redirected.
    pub ip: Option<IpAddr>,
    /// The TLS server name, for TLS connections.
    pub sni: Option<&'a str>,
}

/// Whether `name` (lower case) is matched by `pattern` (`*`, `*.suffix` or exact).
pub fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern == name,
    }
}

/// Whether `ip` lies in `net/len`.
fn in_subnet(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl L4Match {
    fn matches(&self, c: &L4View<'_>) -> bool {
        self.port.is_none_or(|p| c.port == Some(p))
            && (self.subnets.is_empty()
                || c.ip
                    .is_some_and(|ip| self.subnets.iter().any(|s| in_subnet(ip, *s))))
            && (self.sni_hosts.is_empty()
                || c.sni
                    .is_some_and(|n| self.sni_hosts.iter().any(|h| host_matches(h, n))))
    }
}

impl L4Route {
    /// Compiles a TCP route; None when every match alternative is for other source workloads.
    pub fn compile(
        r: &xds::L4Route,
        source: Source<'_>,
        cluster_of: &impl Fn(&str, &str) -> Option<usize>,
    ) -> Result<Option<Self>, ActionError> {
        let matches: Vec<L4Match> = r
            .r#match
            .iter()
            .filter(|m| {
                applies_to_source(
                    source.labels,
                    source.namespace,
                    &m.source_labels,
                    &m.source_namespace,
                )
            })
            .map(|m| L4Match {
                port: u16::try_from(m.port).ok().filter(|p| *p != 0),
                subnets: m
                    .destination_subnets
                    .iter()
                    .filter_map(|s| xds::parse_subnet(s))
                    .collect(),
                sni_hosts: m
                    .sni_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase().into())
                    .collect(),
            })
            .collect();
        if !r.r#match.is_empty() && matches.is_empty() {
            return Ok(None);
        }
        let mut dests = Vec::with_capacity(r.destinations.len());
        for d in &r.destinations {
            dests.push(Destination::compile(d, cluster_of)?);
        }
        if dests.is_empty() {
            return Err(ActionError::Destination("(none)".into()));
        }
        Ok(Some(Self {
            matches,
            split: Split::new(dests),
        }))
    }

    /// Compiles a virtual host's `kind` ("tcp" or "tls") routes, in order, leaving out those
    /// meant only for other source workloads.
    pub fn compile_all(
        vhost: &str,
        kind: &str,
        routes: &[xds::L4Route],
        source: Source<'_>,
        cluster_of: &impl Fn(&str, &str) -> Option<usize>,
    ) -> Result<Vec<Self>, RouteError> {
        let mut out = Vec::with_capacity(routes.len());
        for r in routes {
            let route = Self::compile(r, source, cluster_of)
                .map_err(|e| RouteError::new(vhost, format!("{kind} route `{}`: {e}", r.name)))?;
            out.extend(route);
        }
        Ok(out)
    }

    /// Whether a connection takes this route.
    pub fn matches(&self, c: &L4View<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let net = |s: &str| xds::parse_subnet(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_subnet(ip("10.1.2.3"), net("10.1.0.0/16")));
        assert!(!in_subnet(ip("10.2.2.3"), net("10.1.0.0/16")));
        assert!(in_subnet(ip("10.2.2.3"), net("0.0.0.0/0")));
        assert!(in_subnet(ip("10.1.2.3"), net("10.1.2.3")));
        assert!(in_subnet(ip("fd00::1"), net("fd00::/8")));
        assert!(!in_subnet(ip("10.1.2.3"), net("fd00::/8")));
    }

    #[test]
    fn server_names() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "x"));
        assert!(host_matches("a.b", "a.b") && !host_matches("a.b", "a.c"));
    }
}
