//! VirtualServices → the proxies' virtual hosts: HTTP routes with every match condition,
//! weighted destinations and the request actions of [`super::traffic`], and the TCP and TLS
//! routes of [`super::l4`]. What the proxy cannot express is reported as a note; a route that
//! cannot be translated faithfully (an unknown destination, say) is left out — it then never
//! matches — instead of changing meaning.

use std::collections::HashMap;

use halyard_xds::{string_match, HttpMatch, Mirror, RouteDestination, StringMatch, VirtualHost};

use super::services::{aliases, duration, Registry};
use super::{l4, traffic};
use crate::model::networking::{Destination, HttpMatchRequest, HttpRoute, VirtualService};
use crate::model::values::StringMatch as IstioMatch;
use crate::model::{exported_to, resolve_host, Doc, Model};

/// Where notes about one VirtualService go, with what names it in them.
pub(super) struct Scope<'a> {
    /// The services destinations are resolved against.
    pub registry: &'a Registry,
    /// The VirtualService's namespace: short destination hosts resolve in it.
    pub ns: &'a str,
    /// `VirtualService ns/name`, the start of every note.
    pub id: String,
    /// Notes collected for the translation.
    pub notes: &'a mut Vec<String>,
}

impl Scope<'_> {
    /// Records a note about `what` (e.g. "route `x`").
    pub fn note(&mut self, what: &str, message: impl std::fmt::Display) {
        self.notes.push(format!("{}: {what}: {message}", self.id));
    }

    /// Resolves a destination to a service of the registry, checking its port and subset;
    /// `Err` says why the proxy could not use it.
    pub fn destination(&self, d: &Destination) -> Result<RouteDestination, String> {
        let Some(entry) = self.registry.find(&d.host, self.ns) else {
            return Err(format!("unknown destination host {}", d.host));
        };
        let svc = &entry.service;
        let port = d.port.as_ref().map_or(0, |p| p.number);
        if port != 0 && !svc.ports.iter().any(|p| p.port == port) {
            return Err(format!("service {} has no port {port}", svc.name));
        }
        let subset = d.subset.clone().unwrap_or_default();
        if !subset.is_empty() && !svc.subsets.iter().any(|s| s.name == subset) {
            return Err(format!(
                "service {} has no subset `{subset}` (no DestinationRule in scope defines it)",
                svc.name
            ));
        }
        Ok(RouteDestination {
            service: svc.name.clone(),
            port,
            subset,
            ..Default::default()
        })
    }
}

/// Istio's weight of a destination: a lone destination takes all traffic whatever its
/// weight; among several, an unset weight is 0 (they add up to 100).
pub(super) fn weight(w: Option<i32>, count: usize) -> u32 {
    if count == 1 {
        100
    } else {
        u32::try_from(w.unwrap_or(0).clamp(0, 100)).unwrap_or(0)
    }
}

/// An Istio string match; an empty one (`{}`) has no match type: a presence test.
fn string_match(m: &IstioMatch) -> StringMatch {
    let t = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => Some(string_match::MatchType::Exact(e.clone())),
        (_, Some(p), _) => Some(string_match::MatchType::Prefix(p.clone())),
        (_, _, Some(r)) => Some(string_match::MatchType::Regex(r.clone())),
        _ => None,
    };
    StringMatch { match_type: t }
}

/// A string match that must compare something (uri, method, authority, scheme).
fn typed_match(m: Option<&IstioMatch>) -> Option<StringMatch> {
    m.map(string_match).filter(|s| s.match_type.is_some())
}

fn string_matches(
    m: &std::collections::BTreeMap<String, IstioMatch>,
    lowercase: bool,
) -> HashMap<String, StringMatch> {
    m.iter()
        .map(|(k, v)| {
            let k = if lowercase {
                k.to_ascii_lowercase()
            } else {
                k.clone()
            };
            (k, string_match(v))
        })
        .collect()
}

/// One Istio `HTTPMatchRequest`, every condition included.
fn http_match(m: &HttpMatchRequest) -> HttpMatch {
    HttpMatch {
        uri: typed_match(m.uri.as_ref()),
        method: typed_match(m.method.as_ref()),
        headers: string_matches(&m.headers, true),
        authority: typed_match(m.authority.as_ref()),
        query_params: string_matches(&m.query_params, false),
        without_headers: string_matches(&m.without_headers, true),
        port: m.port.unwrap_or(0),
        source_labels: m
            .source_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
        ignore_uri_case: m.ignore_uri_case,
        scheme: typed_match(m.scheme.as_ref()),
        name: m.name.clone().unwrap_or_default(),
    }
}

/// The route's mirrors: `mirror` with `mirrorPercentage` (or the deprecated `mirrorPercent`),
/// and `mirrors`, each with its own percentage; no percentage mirrors every request. A mirror
/// the proxy cannot reach is left out (the route itself still applies).
fn mirrors(cx: &mut Scope<'_>, what: &str, r: &HttpRoute) -> Vec<Mirror> {
    let single = r.mirror.as_ref().map(|d| {
        let percent = r
            .mirror_percentage
            .as_ref()
            .map(|p| p.value)
            .or(r.mirror_percent.map(f64::from));
        (d, percent)
    });
    let listed = r.mirrors.iter().filter_map(|m| {
        Some((
            m.destination.as_ref()?,
            m.percentage.as_ref().map(|p| p.value),
        ))
    });
    let mut out = Vec::new();
    for (d, percent) in single.into_iter().chain(listed) {
        match cx.destination(d) {
            Ok(destination) => out.push(Mirror {
                destination: Some(destination),
                percent,
            }),
            Err(why) => cx.note(what, format_args!("mirror left out: {why}")),
        }
    }
    out
}

/// One Istio HTTP route, or `None` (with a note) when the proxy could not apply it as written.
fn http_route(
    cx: &mut Scope<'_>,
    vs: &Doc<VirtualService>,
    i: usize,
    r: &HttpRoute,
) -> Option<halyard_xds::HttpRoute> {
    let name = r
        .name
        .clone()
        .unwrap_or_else(|| format!("{}.{}.{i}", vs.meta.name, vs.meta.namespace));
    let what = format!("route `{name}`");
    let mut destinations = Vec::with_capacity(r.route.len());
    for d in &r.route {
        let resolved = match &d.destination {
            Some(dest) => cx.destination(dest),
            None => Err("a destination without host".to_string()),
        };
        let mut dest = match resolved {
            Ok(dest) => dest,
            Err(why) => {
                cx.note(&what, format_args!("{why}; the route is left out"));
                return None;
            }
        };
        dest.weight = weight(d.weight, r.route.len());
        (dest.request_headers, dest.response_headers) = traffic::headers(d.headers.as_ref());
        destinations.push(dest);
    }
    let redirect = r.redirect.as_ref().map(traffic::redirect);
    if destinations.is_empty() && redirect.is_none() {
        cx.note(
            &what,
            "no destination or redirect the proxy can use (directResponse and delegate are not supported); the route is left out",
        );
        return None;
    }
    let (request_headers, response_headers) = traffic::headers(r.headers.as_ref());
    let rewrite = r
        .rewrite
        .as_ref()
        .and_then(|rw| traffic::rewrite(rw, &mut |m| cx.note(&what, m)));
    let retries = traffic::retries(r.retries.as_ref(), &mut |m| cx.note(&what, m));
    let mirrors = mirrors(cx, &what, r);
    Some(halyard_xds::HttpRoute {
        name,
        r#match: r.matches.iter().map(http_match).collect(),
        // A lone destination also as `route`, for proxies that predate `destinations`.
        route: match destinations.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        },
        timeout: duration(r.timeout.as_ref()),
        destinations,
        redirect,
        rewrite,
        request_headers,
        response_headers,
        mirrors,
        retries,
        fault: traffic::fault(r.fault.as_ref()),
    })
}

/// The virtual hosts a proxy in `ns` needs: every VirtualService exported to `ns`.
pub(super) fn virtual_hosts(
    model: &Model,
    registry: &Registry,
    ns: &str,
    notes: &mut Vec<String>,
) -> Vec<VirtualHost> {
    let mut out = Vec::new();
    for vs in &model.virtual_services {
        if !exported_to(&vs.spec.export_to, &vs.meta.namespace, ns) {
            continue;
        }
        let vs_ns = vs.meta.namespace.as_str();
        let mut cx = Scope {
            registry,
            ns: vs_ns,
            id: format!("VirtualService {vs_ns}/{}", vs.meta.name),
            notes: &mut *notes,
        };
        let fqdns: Vec<String> = vs
            .spec
            .hosts
            .iter()
            .map(|h| resolve_host(h, vs_ns).to_ascii_lowercase())
            .collect();
        let routes = vs
            .spec
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, r)| http_route(&mut cx, vs, i, r))
            .collect();
        let tcp_routes = l4::tcp_routes(&mut cx, vs);
        let tls_routes = l4::tls_routes(&mut cx, vs);
        out.push(VirtualHost {
            name: format!("{vs_ns}/{}", vs.meta.name),
            hosts: aliases(&fqdns, ns),
            routes,
            tcp_routes,
            tls_routes,
        });
    }
    out
}
