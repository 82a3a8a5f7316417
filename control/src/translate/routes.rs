//! VirtualServices → the proxies' virtual hosts (HTTP routes). Only what the proxy applies
//! today is emitted; the rest is reported as notes rather than silently changing meaning: a
//! route whose match the proxy cannot evaluate is left out (it never matches) instead of
//! matching everything.

use halyard_xds::{string_match, HttpMatch, HttpRoute, RouteDestination, StringMatch, VirtualHost};

use super::services::{aliases, Registry};
use crate::model::values::StringMatch as IstioMatch;
use crate::model::{exported_to, resolve_host, Model};

fn string_match(m: &IstioMatch) -> Option<StringMatch> {
    let t = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => string_match::MatchType::Exact(e.clone()),
        (_, Some(p), _) => string_match::MatchType::Prefix(p.clone()),
        _ => return None,
    };
    Some(StringMatch {
        match_type: Some(t),
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
        let vs_ns = &vs.meta.namespace;
        let id = format!("VirtualService {vs_ns}/{}", vs.meta.name);
        let fqdns: Vec<String> = vs
            .spec
            .hosts
            .iter()
            .map(|h| resolve_host(h, vs_ns).to_ascii_lowercase())
            .collect();
        let mut routes = Vec::new();
        for (i, r) in vs.spec.http.iter().enumerate() {
            let name = r
                .name
                .clone()
                .unwrap_or_else(|| format!("{}.{}.{i}", vs.meta.name, vs_ns));
            let mut matches = Vec::new();
            let mut unsupported = false;
            for m in &r.matches {
                let uri = match &m.uri {
                    Some(u) => match string_match(u) {
                        Some(s) => Some(s),
                        None => {
                            unsupported = true;
                            None
                        }
                    },
                    None => None,
                };
                let method = m.method.as_ref().and_then(string_match);
                if m.method.is_some() && method.is_none() {
                    unsupported = true;
                }
                let mut headers = std::collections::HashMap::new();
                for (k, v) in &m.headers {
                    match string_match(v) {
                        Some(s) => {
                            headers.insert(k.to_ascii_lowercase(), s);
                        }
                        None => unsupported = true,
                    }
                }
                if !m.query_params.is_empty()
                    || !m.without_headers.is_empty()
                    || !m.source_labels.is_empty()
                    || m.source_namespace.is_some()
                    || m.port.is_some()
                    || m.authority.is_some()
                    || m.scheme.is_some()
                    || m.ignore_uri_case
                {
                    unsupported = true;
                }
                matches.push(HttpMatch {
                    uri,
                    method,
                    headers,
                });
            }
            if unsupported {
                notes.push(format!(
                    "{id}: route `{name}`: a match condition the proxy does not evaluate yet (regex, queryParams, withoutHeaders, source, port, authority, scheme or ignoreUriCase); the route is left out"
                ));
                continue;
            }
            let Some(dest) = r
                .route
                .iter()
                .max_by_key(|d| d.weight.unwrap_or(if r.route.len() == 1 { 100 } else { 0 }))
                .and_then(|d| d.destination.as_ref())
            else {
                notes.push(format!("{id}: route `{name}` has no destination the proxy can use (redirect/directResponse not applied yet); left out"));
                continue;
            };
            if r.route.len() > 1 || dest.subset.is_some() {
                notes.push(format!("{id}: route `{name}`: weighted splits and subsets are not applied yet; all traffic goes to the heaviest destination"));
            }
            if r.retries.is_some()
                || r.fault.is_some()
                || r.mirror.is_some()
                || r.rewrite.is_some()
                || r.headers.is_some()
            {
                notes.push(format!("{id}: route `{name}`: retries, fault, mirror, rewrite and header operations are not applied yet"));
            }
            let Some(svc) = registry.find(&dest.host, vs_ns) else {
                notes.push(format!(
                    "{id}: route `{name}`: unknown destination host {}",
                    dest.host
                ));
                continue;
            };
            let timeout = super::services::duration(r.timeout.as_ref());
            routes.push(HttpRoute {
                name,
                r#match: matches,
                route: Some(RouteDestination {
                    service: svc.service.name.clone(),
                    port: dest.port.as_ref().map_or(0, |p| p.number),
                }),
                timeout,
            });
        }
        if !vs.spec.tcp.is_empty() || !vs.spec.tls.is_empty() {
            notes.push(format!("{id}: tcp and tls routes are not applied yet"));
        }
        out.push(VirtualHost {
            name: format!("{vs_ns}/{}", vs.meta.name),
            hosts: aliases(&fqdns, ns),
            routes,
        });
    }
    out
}
