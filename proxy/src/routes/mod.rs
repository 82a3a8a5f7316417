//! HTTP route table: authority → virtual host → first matching route.

mod action;
mod l4;
mod matcher;
mod retry;

pub use l4::{host_matches, L4Route, L4View};

pub use action::{
    Abort, Action, ActionError, Destination, Fault, Headers, Mirror, Redirect, Rewrite,
    RouteAction, Split,
};
pub use matcher::{applies_to_source, query_value, MatchError, RequestView, RouteMatch, StrMatch};
pub use retry::{RetryOn, RetryPolicy};

use std::collections::HashMap;
use std::sync::Arc;

use halyard_xds as xds;

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for logs.
    pub name: Arc<str>,
    matches: Vec<RouteMatch>,
    /// What it does.
    pub action: RouteAction,
}

impl Route {
    /// A route that takes every request to `cluster`.
    pub fn catch_all(name: Arc<str>, cluster: usize) -> Self {
        Self {
            name,
            matches: Vec::new(),
            action: RouteAction::to_cluster(cluster),
        }
    }

    /// The alternative that matches (`Some(None)` for a route without conditions).
    fn matching(&self, r: &RequestView<'_>) -> Option<Option<&RouteMatch>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(r)).map(Some)
    }
}

/// A route chosen for a request, with the alternative that matched.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Route,
    /// The alternative that matched, if the route had conditions.
    pub by: Option<&'a RouteMatch>,
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

impl RouteError {
    /// An error in virtual host `vhost`.
    pub fn new(vhost: &str, message: String) -> Self {
        Self {
            vhost: vhost.to_string(),
            message,
        }
    }
}

/// A host in lower case, copied only when it has upper-case letters.
pub fn lower_host(host: &str) -> std::borrow::Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Splits a `:port` suffix off a host (also for `[v6]:port`).
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
    pub fn find(&self, r: &RequestView<'_>) -> Option<Matched<'_>> {
        self.vhost(r.host)?
            .routes
            .iter()
            .find_map(|route| route.matching(r).map(|by| Matched { route, by }))
    }
}

/// The proxy's own workload, for routes that apply only to some callers.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Workload labels.
    pub labels: &'a HashMap<String, String>,
    /// Workload namespace.
    pub namespace: &'a str,
}

/// Compiles an explicit virtual host; `cluster_of(service, subset)` resolves a destination to
/// a cluster index. Match alternatives for other source workloads are dropped here, and a
/// route left with none never matches.
pub fn compile_vhost(
    vh: &xds::VirtualHost,
    source: Source<'_>,
    cluster_of: impl Fn(&str, &str) -> Option<usize>,
) -> Result<VirtualHost, RouteError> {
    let err = |message: String| RouteError {
        vhost: vh.name.clone(),
        message,
    };
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        let name = if r.name.is_empty() {
            format!("{}-{i}", vh.name)
        } else {
            r.name.clone()
        };
        let mut matches = Vec::with_capacity(r.r#match.len());
        for m in &r.r#match {
            if !applies_to_source(
                source.labels,
                source.namespace,
                &m.source_labels,
                &m.source_namespace,
            ) {
                continue;
            }
            matches.push(RouteMatch::compile(m).map_err(|e| err(format!("route `{name}`: {e}")))?);
        }
        if !r.r#match.is_empty() && matches.is_empty() {
            // Every alternative is for other callers.
            continue;
        }
        let action = RouteAction::compile(r, &cluster_of)
            .map_err(|e| err(format!("route `{name}`: {e}")))?;
        routes.push(Route {
            name: name.into(),
            matches,
            action,
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
    use http::{HeaderMap, Method};

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        let yaml = "services:\n  - {name: api, ports: [{port: 80}], subsets: [{name: v2}]}\n  - {name: web, ports: [{port: 8080}]}\nvirtualHosts:\n  - name: a\n    hosts: [a.local]\n    routes:\n      - name: mine\n        match: [{uri: {prefix: /mine}, sourceLabels: {app: web}}]\n        route: {service: api}\n      - name: theirs\n        match: [{uri: {prefix: /theirs}, sourceNamespace: other}]\n        route: {service: api}\n      - name: api\n        match: [{uri: {prefix: /api/}}]\n        destinations: [{service: api, weight: 1}, {service: api, subset: v2, weight: 0}]\n      - name: rest\n        route: {service: web, port: 8080}\n";
        let cfg = xds::parse_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        let vh = &cfg.virtual_hosts[0];
        let mut labels = HashMap::new();
        labels.insert("app".to_string(), "web".to_string());
        let source = Source {
            labels: &labels,
            namespace: "demo",
        };
        let compiled = compile_vhost(vh, source, |s, subset| match (s, subset) {
            ("api", "") => Some(0),
            ("api", "v2") => Some(3),
            ("web", "") => Some(1),
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

    fn find<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a Route> {
        let h = HeaderMap::new();
        let host = host.to_ascii_lowercase();
        let view = RequestView {
            method: &Method::GET,
            path,
            query: None,
            host: &host,
            authority: &host,
            scheme: "http",
            port: None,
            headers: &h,
        };
        t.find(&view).map(|m| m.route)
    }

    fn cluster(r: &Route) -> usize {
        match &r.action.action {
            Action::Forward(s) => s.pick().unwrap().cluster,
            Action::Redirect(_) => usize::MAX,
        }
    }

    #[test]
    fn matches_in_order() {
        let t = table();
        assert_eq!(&*find(&t, "a.local", "/api/x").unwrap().name, "api");
        assert_eq!(cluster(find(&t, "a.local", "/api/x").unwrap()), 0);
        let rest = find(&t, "a.local", "/other").unwrap();
        assert_eq!(&*rest.name, "rest");
        match &rest.action.action {
            Action::Forward(s) => assert_eq!(s.destinations[0].port, Some(8080)),
            Action::Redirect(_) => panic!("not a redirect"),
        }
        assert_eq!(cluster(find(&t, "A.LOCAL", "/api/").unwrap()), 0);
        assert_eq!(cluster(find(&t, "x.wild.local", "/").unwrap()), 2);
        assert!(find(&t, "wild.local", "/").is_none());
        assert_eq!(cluster(find(&t, "a.b.wild.local", "/").unwrap()), 2);
        assert!(find(&t, "b.local", "/").is_none());
    }

    #[test]
    fn source_conditions_are_resolved_at_compile_time() {
        let t = table();
        assert_eq!(&*find(&t, "a.local", "/mine").unwrap().name, "mine");
        // The route for another namespace's callers is gone: the request falls through.
        assert_eq!(&*find(&t, "a.local", "/theirs").unwrap().name, "rest");
    }

    #[test]
    fn unknown_subset_is_an_error() {
        // Validation refuses this too; compilation must not rely on it.
        let vh = xds::VirtualHost {
            name: "a".into(),
            hosts: vec!["a.local".into()],
            routes: vec![xds::HttpRoute {
                destinations: vec![xds::RouteDestination {
                    service: "api".into(),
                    subset: "nope".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let labels = HashMap::new();
        let src = Source {
            labels: &labels,
            namespace: "",
        };
        let e = compile_vhost(&vh, src, |s, sub| {
            (s == "api" && sub.is_empty()).then_some(0)
        })
        .unwrap_err();
        assert!(e.to_string().contains("api subset nope"), "{e}");
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("a.local:8080"), ("a.local", Some(8080)));
        assert_eq!(normalize_host("a.local"), ("a.local", None));
        assert_eq!(normalize_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(normalize_host("::1"), ("::1", None));
    }
}
