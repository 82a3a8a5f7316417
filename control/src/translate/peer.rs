//! A node's own workload: its inbound ports (from the ServiceEntries that select it) and the
//! inbound mutual TLS mode of each, from PeerAuthentication.

use halyard_xds::{InboundPort, MtlsMode, Workload};

use super::services::protocol;
use super::Placement;
use crate::model::security::MtlsMode as Mode;
use crate::model::{selects, serving_ports, Doc, Model, PeerAuthentication, WorkloadEntry};

fn mode(m: Option<Mode>) -> MtlsMode {
    match m {
        Some(Mode::Strict) => MtlsMode::Strict,
        Some(Mode::Permissive) => MtlsMode::Permissive,
        Some(Mode::Disable) => MtlsMode::Disable,
        Some(Mode::Unset) | None => MtlsMode::MtlsUnset,
    }
}

/// The PeerAuthentications in force for a workload, most specific first: one selecting it in
/// its namespace, the namespace-wide one, the mesh-wide one (root namespace). Istio's
/// precedence: the first with a mode set wins; port-level modes only from the selecting one.
fn policies<'a>(model: &'a Model, we: &Doc<WorkloadEntry>) -> Vec<&'a Doc<PeerAuthentication>> {
    let ns = &we.meta.namespace;
    let root = model.mesh.root_namespace();
    let mut out = Vec::new();
    // The oldest wins among several of a kind in Istio; file order stands in for age here.
    if let Some(p) = model.peer_authentications.iter().find(|p| {
        p.meta.namespace == *ns
            && !p.spec.is_namespace_wide()
            && p.spec
                .selector
                .as_ref()
                .is_some_and(|s| selects(&s.match_labels, &we.spec.labels))
    }) {
        out.push(p);
    }
    for scope in [ns.as_str(), root] {
        if let Some(p) = model
            .peer_authentications
            .iter()
            .find(|p| p.meta.namespace == scope && p.spec.is_namespace_wide())
        {
            out.push(p);
        }
    }
    out
}

/// The workload resource of a node.
pub(super) fn workload(model: &Model, we: &Doc<WorkloadEntry>, placement: &Placement) -> Workload {
    let pas = policies(model, we);
    let workload_mode = pas
        .iter()
        .map(|p| mode(p.spec.mtls.as_ref().and_then(|m| m.mode)))
        .find(|m| *m != MtlsMode::MtlsUnset)
        .unwrap_or(MtlsMode::MtlsUnset);
    let selecting = pas.first().filter(|p| !p.spec.is_namespace_wide());
    let port_mode = |port: u32| -> MtlsMode {
        selecting
            .and_then(|p| p.spec.port_level_mtls.get(&port.to_string()))
            .map_or(MtlsMode::MtlsUnset, |m| mode(m.mode))
    };

    // Without iptables capture the sidecar reaches its app where the app really listens.
    let app_ip = placement.app_ip(we);
    let ports = serving_ports(model, we)
        .into_iter()
        .map(|(port, p)| InboundPort {
            port,
            protocol: protocol(p.protocol.as_deref()) as i32,
            name: p.name.clone(),
            mtls: port_mode(port) as i32,
            app_address: app_ip.map_or_else(String::new, |ip| {
                std::net::SocketAddr::new(ip, port as u16).to_string()
            }),
        })
        .collect();
    Workload {
        name: we.meta.name.clone(),
        namespace: we.meta.namespace.clone(),
        labels: we
            .spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ports,
        service_account: we.spec.service_account().to_string(),
        mtls: workload_mode as i32,
    }
}
