//! A node's own workload: its inbound ports (from the ServiceEntries that select it) and the
//! inbound mutual TLS mode of each, from PeerAuthentication.

use std::collections::BTreeMap;

use halyard_xds::{InboundPort, MtlsMode, Workload};

use super::services::Registry;
use crate::model::security::MtlsMode as Mode;
use crate::model::{selects, Doc, Model, PeerAuthentication, WorkloadEntry};

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
pub(super) fn workload(model: &Model, we: &Doc<WorkloadEntry>, registry: &Registry) -> Workload {
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

    // Ports: each port of each ServiceEntry selecting this workload, at the workload's port.
    let mut ports: BTreeMap<u32, InboundPort> = BTreeMap::new();
    for se in &model.service_entries {
        let sel = match &se.spec.workload_selector {
            Some(s) if se.meta.namespace == we.meta.namespace => s,
            _ => continue,
        };
        if !selects(&sel.labels, &we.spec.labels) {
            continue;
        }
        let Some(svc) = registry.find(&se.spec.hosts[0], &se.meta.namespace) else {
            continue;
        };
        for p in &svc.service.ports {
            let target = we
                .spec
                .ports
                .get(&p.name)
                .copied()
                .filter(|n| *n != 0)
                .unwrap_or(if p.target_port != 0 {
                    p.target_port
                } else {
                    p.port
                });
            ports.entry(target).or_insert_with(|| InboundPort {
                port: target,
                protocol: p.protocol,
                name: p.name.clone(),
                mtls: port_mode(target) as i32,
                ..Default::default()
            });
        }
    }
    Workload {
        name: we.meta.name.clone(),
        namespace: we.meta.namespace.clone(),
        labels: we
            .spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ports: ports.into_values().collect(),
        service_account: we.spec.service_account().to_string(),
        mtls: workload_mode as i32,
    }
}
