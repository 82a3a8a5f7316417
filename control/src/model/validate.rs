//! Checks across documents: duplicate names, references from routes to services and subsets,
//! rules for unknown hosts, selectors that select nothing, conflicting policies.

use std::collections::HashMap;

use super::error::{Cx, Diagnostic, FieldPath, Source};
use super::networking::{host_covers, Destination, Location};
use super::values::{exported_to, selects};
use super::{resource_id, Doc, Kind, Meta, Model};

/// The DNS suffix that short host names are completed with (`reviews` in namespace
/// `bookinfo` is `reviews.bookinfo.svc.cluster.local`), as in Istio.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Completes a short host name (no dot) with the namespace and cluster domain.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}")
    }
}

/// Runs every cross-document check.
pub(crate) fn cross_check(model: &Model, out: &mut Vec<Diagnostic>) {
    duplicates(model, out);
    let services = registry(model);
    routes(model, &services, out);
    destination_rules(model, &services, out);
    workload_selectors(model, out);
    peer_authentications(model, out);
    principals(model, out);
    shared_listen_addresses(model, out);
}

/// The ports a workload serves, each with the ServiceEntry port it serves: for every
/// ServiceEntry of its namespace that selects it, the WorkloadEntry's port of that name, else
/// the port's `targetPort`, else its `number` (Istio's order). One entry per workload port.
pub fn serving_ports<'a>(
    model: &'a Model,
    we: &Doc<super::WorkloadEntry>,
) -> Vec<(u32, &'a super::networking::ServicePort)> {
    let mut out: Vec<(u32, &super::networking::ServicePort)> = Vec::new();
    for se in &model.service_entries {
        let selected = se.meta.namespace == we.meta.namespace
            && se
                .spec
                .workload_selector
                .as_ref()
                .is_some_and(|s| selects(&s.labels, &we.spec.labels));
        if !selected {
            continue;
        }
        for p in &se.spec.ports {
            let port = we
                .spec
                .ports
                .get(&p.name)
                .copied()
                .filter(|n| *n != 0)
                .or(p.target_port.filter(|n| *n != 0))
                .unwrap_or(p.number);
            if !out.iter().any(|(n, _)| *n == port) {
                out.push((port, p));
            }
        }
    }
    out.sort_by_key(|(n, _)| *n);
    out
}

/// Two workloads cannot listen on one address and port: whichever is second is an error.
fn shared_listen_addresses(model: &Model, out: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<(std::net::IpAddr, u32), &Doc<super::WorkloadEntry>> = HashMap::new();
    for we in &model.workload_entries {
        let Ok(ip) = we.spec.address.parse::<std::net::IpAddr>() else {
            continue;
        };
        for (port, _) in serving_ports(model, we) {
            match seen.get(&(ip, port)) {
                Some(first) => cx_for(Kind::WorkloadEntry, &we.meta, &we.source, out).error(
                    &FieldPath::root().f("spec").f("address"),
                    format!(
                        "{ip} port {port} is also served by WorkloadEntry {}/{} ({}); two \
                         workloads cannot listen on one address and port",
                        first.meta.namespace, first.meta.name, first.source.origin
                    ),
                ),
                None => {
                    seen.insert((ip, port), we);
                }
            }
        }
    }
}

/// A host defined by a ServiceEntry.
struct Service<'a> {
    host: String,
    doc: &'a Doc<super::ServiceEntry>,
}

fn registry(model: &Model) -> Vec<Service<'_>> {
    let mut out = Vec::new();
    for doc in &model.service_entries {
        for h in &doc.spec.hosts {
            out.push(Service {
                host: resolve_host(h, &doc.meta.namespace),
                doc,
            });
        }
    }
    out
}

fn cx_for<'a>(kind: Kind, meta: &Meta, source: &'a Source, out: &'a mut Vec<Diagnostic>) -> Cx<'a> {
    Cx::new(source, resource_id(kind, meta), out)
}

fn duplicates(model: &Model, out: &mut Vec<Diagnostic>) {
    fn check<T>(kind: Kind, docs: &[Doc<T>], out: &mut Vec<Diagnostic>) {
        let mut seen: HashMap<(&str, &str), &Source> = HashMap::new();
        for doc in docs {
            if doc.meta.name.is_empty() {
                continue;
            }
            let key = (doc.meta.namespace.as_str(), doc.meta.name.as_str());
            if let Some(first) = seen.get(&key) {
                let msg = format!(
                    "duplicate name: {} {}/{} is also defined at {}",
                    kind.name(),
                    doc.meta.namespace,
                    doc.meta.name,
                    first.origin
                );
                cx_for(kind, &doc.meta, &doc.source, out)
                    .error(&FieldPath::root().f("metadata").f("name"), msg);
            } else {
                seen.insert(key, &doc.source);
            }
        }
    }
    check(Kind::ServiceEntry, &model.service_entries, out);
    check(Kind::WorkloadEntry, &model.workload_entries, out);
    check(Kind::VirtualService, &model.virtual_services, out);
    check(Kind::DestinationRule, &model.destination_rules, out);
    check(Kind::PeerAuthentication, &model.peer_authentications, out);
    check(
        Kind::AuthorizationPolicy,
        &model.authorization_policies,
        out,
    );
    check(
        Kind::RequestAuthentication,
        &model.request_authentications,
        out,
    );
}

/// Route and mirror destinations must name a service in scope, a port it has, and a subset
/// that a DestinationRule for it defines; two VirtualServices may not claim one host.
fn routes(model: &Model, services: &[Service<'_>], out: &mut Vec<Diagnostic>) {
    let mut claimed: HashMap<String, Vec<&Doc<super::VirtualService>>> = HashMap::new();
    for vs in &model.virtual_services {
        let ns = vs.meta.namespace.as_str();
        let mut cx = cx_for(Kind::VirtualService, &vs.meta, &vs.source, out);
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            let host = resolve_host(h, ns);
            let earlier = claimed.entry(host.clone()).or_default();
            let clash = earlier.iter().find(|other| {
                !(other.meta.name == vs.meta.name && other.meta.namespace == ns)
                    && visibility_overlaps(other, vs)
            });
            if let Some(other) = clash {
                cx.error(
                    &FieldPath::root().f("spec").f("hosts").i(i),
                    format!(
                        "host `{host}` is also routed by VirtualService {}/{} ({}); merge the routes into one",
                        other.meta.namespace,
                        other.meta.name,
                        other.source.origin
                    ),
                );
            } else {
                earlier.push(vs);
            }
        }
        for (path, dest) in vs.spec.destinations() {
            check_destination(model, services, &mut cx, ns, &path, dest);
        }
    }
}

/// Whether two VirtualServices are seen by a common namespace (per `exportTo`).
fn visibility_overlaps(a: &Doc<super::VirtualService>, b: &Doc<super::VirtualService>) -> bool {
    fn scope(d: &Doc<super::VirtualService>) -> Option<Vec<&str>> {
        let e = &d.spec.export_to;
        if e.is_empty() || e.iter().any(|n| n == "*") {
            return None; // everywhere
        }
        Some(
            e.iter()
                .map(|n| {
                    if n == "." {
                        d.meta.namespace.as_str()
                    } else {
                        n.as_str()
                    }
                })
                .collect(),
        )
    }
    match (scope(a), scope(b)) {
        (Some(x), Some(y)) => x.iter().any(|n| y.contains(n)),
        _ => true,
    }
}

fn check_destination(
    model: &Model,
    services: &[Service<'_>],
    cx: &mut Cx<'_>,
    ns: &str,
    path: &FieldPath,
    dest: &Destination,
) {
    if dest.host.is_empty() || dest.host.starts_with('*') {
        return; // reported by the document's own checks
    }
    let host = resolve_host(&dest.host, ns);
    let shown = if host == dest.host {
        format!("`{host}`")
    } else {
        format!("`{}` ({host})", dest.host)
    };
    let matching: Vec<&Service<'_>> = services
        .iter()
        .filter(|s| host_covers(&s.host, &host))
        .collect();
    let visible: Vec<&Service<'_>> = matching
        .iter()
        .copied()
        .filter(|s| exported_to(&s.doc.spec.export_to, &s.doc.meta.namespace, ns))
        .collect();
    let host_path = path.f("host");
    if visible.is_empty() {
        match matching.first() {
            Some(s) => cx.error(
                &host_path,
                format!(
                    "unknown service {shown}: ServiceEntry {}/{} defines it but does not export it to namespace {ns}",
                    s.doc.meta.namespace, s.doc.meta.name
                ),
            ),
            None => cx.error(
                &host_path,
                format!("unknown service {shown}: no ServiceEntry visible from namespace {ns} defines it"),
            ),
        }
        return;
    }
    if let Some(port) = &dest.port {
        let has = visible
            .iter()
            .any(|s| s.doc.spec.ports.iter().any(|p| p.number == port.number));
        if !has && port.number != 0 {
            let s = visible[0];
            let ports: Vec<String> = s
                .doc
                .spec
                .ports
                .iter()
                .map(|p| p.number.to_string())
                .collect();
            cx.error(
                &path.f("port").f("number"),
                format!(
                    "service {shown} has no port {} (ServiceEntry {}/{} has {})",
                    port.number,
                    s.doc.meta.namespace,
                    s.doc.meta.name,
                    if ports.is_empty() {
                        "none".to_string()
                    } else {
                        ports.join(", ")
                    }
                ),
            );
        }
    }
    let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty()) else {
        return;
    };
    let rules: Vec<&Doc<super::DestinationRule>> = model
        .destination_rules
        .iter()
        .filter(|dr| {
            !dr.spec.host.is_empty()
                && host_covers(&resolve_host(&dr.spec.host, &dr.meta.namespace), &host)
                && exported_to(&dr.spec.export_to, &dr.meta.namespace, ns)
        })
        .collect();
    if rules
        .iter()
        .any(|dr| dr.spec.subsets.iter().any(|s| s.name == subset))
    {
        return;
    }
    let subset_path = path.f("subset");
    if rules.is_empty() {
        cx.error(
            &subset_path,
            format!("unknown subset `{subset}`: no DestinationRule visible from namespace {ns} is for host {shown}"),
        );
    } else {
        let defined: Vec<String> = rules
            .iter()
            .flat_map(|dr| dr.spec.subsets.iter().map(|s| s.name.clone()))
            .collect();
        let names: Vec<String> = rules
            .iter()
            .map(|dr| format!("{}/{}", dr.meta.namespace, dr.meta.name))
            .collect();
        cx.error(
            &subset_path,
            format!(
                "unknown subset `{subset}`: DestinationRule {} for host {shown} defines {}",
                names.join(", "),
                if defined.is_empty() {
                    "no subsets".to_string()
                } else {
                    defined.join(", ")
                }
            ),
        );
    }
}

/// A DestinationRule for a host no ServiceEntry defines applies to nothing (a warning, as in
/// Istio, which ignores such rules).
fn destination_rules(model: &Model, services: &[Service<'_>], out: &mut Vec<Diagnostic>) {
    for dr in &model.destination_rules {
        if dr.spec.host.is_empty() {
            continue;
        }
        let host = resolve_host(&dr.spec.host, &dr.meta.namespace);
        let known = services
            .iter()
            .any(|s| host_covers(&s.host, &host) || host_covers(&host, &s.host));
        if !known {
            cx_for(Kind::DestinationRule, &dr.meta, &dr.source, out).warn(
                &FieldPath::root().f("spec").f("host"),
                format!("no ServiceEntry defines host `{host}`; the rule applies to nothing"),
            );
        }
    }
}

/// A ServiceEntry's workloadSelector should select WorkloadEntries of its namespace.
fn workload_selectors(model: &Model, out: &mut Vec<Diagnostic>) {
    for se in &model.service_entries {
        let Some(sel) = &se.spec.workload_selector else {
            continue;
        };
        if se.spec.location.unwrap_or(Location::MeshExternal) != Location::MeshInternal {
            continue;
        }
        let any = model.workload_entries.iter().any(|we| {
            we.meta.namespace == se.meta.namespace && selects(&sel.labels, &we.spec.labels)
        });
        if !any {
            cx_for(Kind::ServiceEntry, &se.meta, &se.source, out).warn(
                &FieldPath::root().f("spec").f("workloadSelector"),
                format!(
                    "selects no WorkloadEntry in namespace {}; the service has no endpoints",
                    se.meta.namespace
                ),
            );
        }
    }
}

/// One mesh-wide PeerAuthentication (root namespace, no selector) and one namespace-wide per
/// namespace; Istio would silently use the oldest.
fn peer_authentications(model: &Model, out: &mut Vec<Diagnostic>) {
    let root = model.mesh.root_namespace();
    let mut first: HashMap<&str, &Doc<super::PeerAuthentication>> = HashMap::new();
    for pa in &model.peer_authentications {
        if !pa.spec.is_namespace_wide() {
            continue;
        }
        let ns = pa.meta.namespace.as_str();
        match first.get(ns) {
            None => {
                first.insert(ns, pa);
            }
            Some(other) => {
                let scope = if ns == root {
                    format!("mesh-wide PeerAuthentication (root namespace {ns})")
                } else {
                    format!("namespace-wide PeerAuthentication in namespace {ns}")
                };
                cx_for(Kind::PeerAuthentication, &pa.meta, &pa.source, out).error(
                    &FieldPath::root().f("spec").f("selector"),
                    format!(
                        "another {scope}: {} ({}) already applies there; give this one a selector",
                        other.meta.name, other.source.origin
                    ),
                );
            }
        }
    }
}

/// Principals of another trust domain never match (a warning; Istio's default `cluster.local`
/// stands for the mesh's own). A dry-run annotation that is neither `true` nor `false` would
/// silently enforce a policy meant to be tried out: an error.
fn principals(model: &Model, out: &mut Vec<Diagnostic>) {
    let td = model.mesh.trust_domain();
    for ap in &model.authorization_policies {
        let mut cx = cx_for(Kind::AuthorizationPolicy, &ap.meta, &ap.source, out);
        if let Some(v) = ap.meta.annotations.get("istio.io/dry-run") {
            if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                cx.error(
                    &FieldPath::root()
                        .f("metadata")
                        .f("annotations")
                        .k("istio.io/dry-run"),
                    format!("`{v}`: want \"true\" or \"false\""),
                );
            }
        }
        for (i, rule) in ap.spec.rules.iter().enumerate() {
            for (j, from) in rule.from.iter().enumerate() {
                let Some(src) = &from.source else { continue };
                for (field, list) in [
                    ("principals", &src.principals),
                    ("notPrincipals", &src.not_principals),
                ] {
                    for (k, p) in list.iter().enumerate() {
                        if p.starts_with('*') || p.starts_with("spiffe://") {
                            continue;
                        }
                        let Some(domain) = p.split('/').next() else {
                            continue;
                        };
                        if p.contains("/ns/")
                            && domain != td
                            && domain != "cluster.local"
                            && !domain.contains('*')
                        {
                            cx.warn(
                                &FieldPath::root()
                                    .f("spec")
                                    .f("rules")
                                    .i(i)
                                    .f("from")
                                    .i(j)
                                    .f("source")
                                    .f(field)
                                    .i(k),
                                format!("principal `{p}` is in trust domain `{domain}`, not the mesh's `{td}`; it never matches"),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_namespace() {
        assert_eq!(
            resolve_host("reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.bookinfo.svc.cluster.local", "x"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("details.bookinfo.com", "x"),
            "details.bookinfo.com"
        );
        assert_eq!(resolve_host("*", "x"), "*");
    }
}
