//! VirtualService `tcp` and `tls` routes → the proxy's L4 routes: connection matches and
//! weighted destinations.

use halyard_xds::{L4Match, L4Route, RouteDestination};

use super::routes::{weight, Scope};
use crate::model::networking::{
    L4MatchAttributes, RouteDestination as IstioDestination, TlsMatchAttributes, VirtualService,
};
use crate::model::Doc;

/// The weighted destinations of an L4 route, or why the proxy could not use one of them.
fn destinations(
    cx: &Scope<'_>,
    route: &[IstioDestination],
) -> Result<Vec<RouteDestination>, String> {
    route
        .iter()
        .map(|d| {
            let dest = d
                .destination
                .as_ref()
                .ok_or_else(|| "a destination without host".to_string())?;
            let mut out = cx.destination(dest)?;
            out.weight = weight(d.weight, route.len());
            Ok(out)
        })
        .collect()
}

fn labels(
    l: &std::collections::BTreeMap<String, String>,
) -> std::collections::HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Builds one L4 route, or `None` with a note when a destination is unusable.
fn route(
    cx: &mut Scope<'_>,
    name: String,
    matches: Vec<L4Match>,
    route: &[IstioDestination],
) -> Option<L4Route> {
    match destinations(cx, route) {
        Ok(destinations) => Some(L4Route {
            name,
            r#match: matches,
            destinations,
        }),
        Err(why) => {
            cx.note(
                &format!("route `{name}`"),
                format_args!("{why}; the route is left out"),
            );
            None
        }
    }
}

/// The VirtualService's `tcp` routes, in order.
pub(super) fn tcp_routes(cx: &mut Scope<'_>, vs: &Doc<VirtualService>) -> Vec<L4Route> {
    let mut out = Vec::new();
    for (i, r) in vs.spec.tcp.iter().enumerate() {
        let name = format!("{}.{}.tcp.{i}", vs.meta.name, vs.meta.namespace);
        let mut matches = Vec::with_capacity(r.matches.len());
        for m in &r.matches {
            match tcp_match(m) {
                Some(m) => matches.push(m),
                None => cx.note(
                    &format!("route `{name}`"),
                    "a match on sourceSubnet is not applied yet; that match is left out",
                ),
            }
        }
        // Every alternative left out: the route would match everything instead of nothing.
        if !r.matches.is_empty() && matches.is_empty() {
            cx.note(
                &format!("route `{name}`"),
                "no match left; the route is left out",
            );
            continue;
        }
        out.extend(route(cx, name, matches, &r.route));
    }
    out
}

/// A TCP match; `None` when it has a condition the proxy cannot evaluate (`sourceSubnet`).
fn tcp_match(m: &L4MatchAttributes) -> Option<L4Match> {
    if m.source_subnet.is_some() {
        return None;
    }
    Some(L4Match {
        port: m.port.unwrap_or(0),
        destination_subnets: m.destination_subnets.clone(),
        sni_hosts: Vec::new(),
        source_labels: labels(&m.source_labels),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
    })
}

fn tls_match(m: &TlsMatchAttributes) -> L4Match {
    L4Match {
        port: m.port.unwrap_or(0),
        destination_subnets: m.destination_subnets.clone(),
        sni_hosts: m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        source_labels: labels(&m.source_labels),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
    }
}

/// The VirtualService's `tls` routes (by SNI), in order.
pub(super) fn tls_routes(cx: &mut Scope<'_>, vs: &Doc<VirtualService>) -> Vec<L4Route> {
    let mut out = Vec::new();
    for (i, r) in vs.spec.tls.iter().enumerate() {
        let name = format!("{}.{}.tls.{i}", vs.meta.name, vs.meta.namespace);
        let matches = r.matches.iter().map(tls_match).collect();
        out.extend(route(cx, name, matches, &r.route));
    }
    out
}
