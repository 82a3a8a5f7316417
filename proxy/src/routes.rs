//! HTTP route table: authority → virtual host → first matching route.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use halyard_xds as xds;
use http::header::HeaderName;
use http::{HeaderMap, Method};

/// A compiled string condition.
#[derive(Debug, Clone)]
pub enum StrMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
}

impl StrMatch {
    fn from_xds(m: &xds::StringMatch) -> Option<Self> {
        match m.match_type.as_ref()? {
            xds::string_match::MatchType::Exact(s) => Some(Self::Exact(s.clone())),
            xds::string_match::MatchType::Prefix(s) => Some(Self::Prefix(s.clone())),
        }
    }

    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

/// One alternative of a route's match list: every condition must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    uri: Option<StrMatch>,
    method: Option<StrMatch>,
    headers: Vec<(HeaderName, StrMatch)>,
}

impl RouteMatch {
    fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.uri.as_ref().is_none_or(|m| m.matches(path))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(method.as_str()))
            && self.headers.iter().all(|(name, m)| {
                headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
            })
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for logs.
    pub name: Arc<str>,
    matches: Vec<RouteMatch>,
    /// Index of the destination cluster in the snapshot.
    pub cluster: usize,
    /// Destination port, when the route names one.
    pub port: Option<u16>,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
}

impl Route {
    /// A route that takes every request to `cluster`.
    pub fn catch_all(name: Arc<str>, cluster: usize) -> Self {
        Self {
            name,
            matches: Vec::new(),
            cluster,
            port: None,
            timeout: None,
        }
    }

    fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.matches.is_empty()
            || self
                .matches
                .iter()
                .any(|m| m.matches(method, path, headers))
    }
}

/// Ordered routes for a set of host names.
#[derive(Debug, Clone, Default)]
pub struct VirtualHost {
    /// Name for logs.
    pub name: Arc<str>,
    /// Tried in order.
    pub routes: Vec<Route>,
}

/// Host lookup: exact names, then the longest `*.suffix` wildcard, then `*`.
#[derive(Debug, Default)]
pub struct RouteTable {
    vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.suffix` patterns by their suffix including the leading dot.
    wildcard: HashMap<String, usize>,
    any: Option<usize>,
}

/// Why a route could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("virtual host `{vhost}`: {message}")]
pub struct RouteError {
    vhost: String,
    message: String,
}

/// Lower-cases a host and drops a `:port` suffix (also for `[v6]:port`).
pub fn normalize_host(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let port = rest[end + 1..]
                .strip_prefix(':')
                .and_then(|p| p.parse().ok());
            return (&rest[..end], port);
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (authority, None),
    }
}

impl RouteTable {
    /// Adds a virtual host for `hosts` unless each of them is already claimed (explicit
    /// virtual hosts win over the implicit per-service ones added after them).
    pub fn add(&mut self, hosts: &[String], vhost: VirtualHost) {
        let idx = self.vhosts.len();
        let mut used = false;
        for h in hosts {
            let h = h.to_ascii_lowercase();
            let taken = if h == "*" {
                self.any.is_some()
            } else if let Some(suffix) = h.strip_prefix('*') {
                self.wildcard.contains_key(suffix)
            } else {
                self.exact.contains_key(&h)
            };
            if taken {
                continue;
            }
            used = true;
            if h == "*" {
                self.any = Some(idx);
            } else if let Some(suffix) = h.strip_prefix('*') {
                self.wildcard.insert(suffix.to_string(), idx);
            } else {
                self.exact.insert(h, idx);
            }
        }
        if used {
            self.vhosts.push(vhost);
        }
    }

    /// Finds the virtual host for a host name (already without port).
    pub fn vhost(&self, host: &str) -> Option<&VirtualHost> {
        let idx = match self.exact.get(host) {
            Some(i) => Some(*i),
            None if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                return self.vhost(&host.to_ascii_lowercase());
            }
            // Longest matching `*.suffix` first: try the suffix after each dot, left to right.
            None => host
                .char_indices()
                .filter(|&(i, c)| c == '.' && i > 0)
                .find_map(|(i, _)| self.wildcard.get(&host[i..]).copied())
                .or(self.any),
        };
        idx.and_then(|i| self.vhosts.get(i))
    }

    /// Finds the route for a request.
    pub fn find(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.vhost(host)?
            .routes
            .iter()
            .find(|r| r.matches(method, path, headers))
    }
}

/// Compiles an explicit virtual host; `cluster_of` resolves a destination to a cluster index.
pub fn compile_vhost(
    vh: &xds::VirtualHost,
    cluster_of: impl Fn(&str) -> Option<usize>,
) -> Result<VirtualHost, RouteError> {
    let err = |message: String| RouteError {
        vhost: vh.name.clone(),
        message,
    };
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        let dest = r
            .route
            .as_ref()
            .ok_or_else(|| err(format!("route {i} has no destination")))?;
        let cluster = cluster_of(&dest.service)
            .ok_or_else(|| err(format!("unknown service `{}`", dest.service)))?;
        let mut matches = Vec::with_capacity(r.r#match.len());
        for m in &r.r#match {
            let mut headers = Vec::new();
            for (name, sm) in &m.headers {
                let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| err(format!("`{name}` is not a header name")))?;
                if let Some(sm) = StrMatch::from_xds(sm) {
                    headers.push((name, sm));
                }
            }
            matches.push(RouteMatch {
                uri: m.uri.as_ref().and_then(StrMatch::from_xds),
                method: m.method.as_ref().and_then(StrMatch::from_xds),
                headers,
            });
        }
        let name = if r.name.is_empty() {
            format!("{}-{i}", vh.name)
        } else {
            r.name.clone()
        };
        routes.push(Route {
            name: name.into(),
            matches,
            cluster,
            port: u16::try_from(dest.port).ok().filter(|p| *p != 0),
            timeout: r
                .timeout
                .as_ref()
                .map(xds::to_std_duration)
                .filter(|d| !d.is_zero()),
        });
    }
    Ok(VirtualHost {
        name: vh.name.clone().into(),
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        let vh = xds::VirtualHost {
            name: "a".into(),
            hosts: vec!["a.local".into()],
            routes: vec![
                xds::HttpRoute {
                    name: "api".into(),
                    r#match: vec![xds::HttpMatch {
                        uri: Some(xds::StringMatch {
                            match_type: Some(xds::string_match::MatchType::Prefix("/api/".into())),
                        }),
                        ..Default::default()
                    }],
                    route: Some(xds::RouteDestination {
                        service: "api".into(),
                        port: 0,
                    }),
                    timeout: None,
                },
                xds::HttpRoute {
                    name: "rest".into(),
                    route: Some(xds::RouteDestination {
                        service: "web".into(),
                        port: 8080,
                    }),
                    ..Default::default()
                },
            ],
        };
        let compiled = compile_vhost(&vh, |s| match s {
            "api" => Some(0),
            "web" => Some(1),
            _ => None,
        })
        .unwrap();
        t.add(&vh.hosts, compiled);
        t.add(
            &["*.wild.local".into()],
            VirtualHost {
                name: "w".into(),
                routes: vec![Route::catch_all("w".into(), 2)],
            },
        );
        // Already claimed by the explicit vhost: ignored.
        t.add(
            &["a.local".into()],
            VirtualHost {
                name: "dup".into(),
                routes: vec![Route::catch_all("dup".into(), 9)],
            },
        );
        t
    }

    #[test]
    fn matches_in_order() {
        let t = table();
        let h = HeaderMap::new();
        assert_eq!(
            &*t.find("a.local", &Method::GET, "/api/x", &h).unwrap().name,
            "api"
        );
        let rest = t.find("a.local", &Method::GET, "/other", &h).unwrap();
        assert_eq!((&*rest.name, rest.port), ("rest", Some(8080)));
        assert_eq!(
            t.find("A.LOCAL", &Method::GET, "/api/", &h)
                .unwrap()
                .cluster,
            0
        );
        assert_eq!(
            t.find("x.wild.local", &Method::GET, "/", &h)
                .unwrap()
                .cluster,
            2
        );
        assert!(t.find("wild.local", &Method::GET, "/", &h).is_none());
        assert_eq!(
            t.find("a.b.wild.local", &Method::GET, "/", &h)
                .unwrap()
                .cluster,
            2
        );
        assert!(t.find("b.local", &Method::GET, "/", &h).is_none());
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("a.local:8080"), ("a.local", Some(8080)));
        assert_eq!(normalize_host("a.local"), ("a.local", None));
        assert_eq!(normalize_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(normalize_host("::1"), ("::1", None));
    }
}
