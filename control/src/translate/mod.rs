//! Translation: the mesh model (Istio resources) in, each proxy's resources out. A pure
//! function of the model and where the sidecars run; each proxy (node id
//! `namespace/workload-name`, one per `WorkloadEntry`) gets only what concerns it: its own
//! workload and inbound policy, the services visible from its namespace, the routes for them,
//! and the mesh settings.

mod authz;
mod l4;
mod peer;
mod policy;
mod routes;
mod services;
mod traffic;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use halyard_xds::ads::ProxyResources;
use halyard_xds::{
    outbound_traffic_policy, MeshSettings, OutboundTrafficPolicy, Service, Settings, Tracing,
    VirtualHost,
};

use crate::model::mesh::{OtlpProtocol, OutboundMode};
use crate::model::{Doc, Model, WorkloadEntry};

/// Where sidecars and apps run when there is no iptables capture (a mesh on one host). Empty
/// in production, where connections to a workload's address are redirected to its sidecar and
/// the sidecar reaches its app on localhost.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Node id → the sidecar's inbound listener.
    pub sidecars: BTreeMap<String, SocketAddr>,
    /// Node id → the address its app listens on, when that is not the workload's own address.
    pub apps: BTreeMap<String, IpAddr>,
}

impl Placement {
    /// The inbound listener of a workload's sidecar, when it is not reached by capture: from
    /// the placement, else from the WorkloadEntry's sidecar-address annotation.
    pub fn sidecar(&self, we: &Doc<WorkloadEntry>) -> Option<SocketAddr> {
        self.sidecars.get(&node_id(we)).copied().or_else(|| {
            we.meta
                .annotations
                .get(services::SIDECAR_ANNOTATION)
                .and_then(|a| a.parse().ok())
        })
    }

    /// Where a sidecar without capture reaches its app: the placed address, else the
    /// workload's own (an IP); `None` with capture (the app is on the sidecar's localhost).
    pub fn app_ip(&self, we: &Doc<WorkloadEntry>) -> Option<IpAddr> {
        if let Some(ip) = self.apps.get(&node_id(we)) {
            return Some(*ip);
        }
        self.sidecar(we)?;
        we.spec.address.parse().ok()
    }
}

/// The result: resources per node id, and what could not be expressed (yet) for the proxies.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// Node id → its resources (every node has its workload and the mesh settings; the
    /// nodes of a namespace share one `Arc` of services and one of virtual hosts).
    pub nodes: BTreeMap<String, ProxyResources>,
    /// Parts of the model the proxies do not apply yet, one line each (logged, not fatal).
    pub notes: Vec<String>,
}

/// The node id of a workload entry.
pub fn node_id(we: &Doc<WorkloadEntry>) -> String {
    format!("{}/{}", we.meta.namespace, we.meta.name)
}

/// The SPIFFE ID a workload entry's sidecar proves.
pub fn identity(trust_domain: &str, we: &Doc<WorkloadEntry>) -> String {
    format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        we.meta.namespace,
        we.spec.service_account()
    )
}

/// Translates a (checked) model.
pub fn translate(model: &Model, placement: &Placement) -> Translation {
    let mut notes = Vec::new();
    let registry = services::Registry::build(model, placement, &mut notes);
    let mesh = mesh_settings(model);
    let mut nodes = BTreeMap::new();
    // What a proxy may call depends only on its namespace: computed once per namespace, so a
    // large namespace costs one copy, not one per proxy.
    type Shared = (Arc<Vec<Service>>, Arc<Vec<VirtualHost>>);
    let mut by_ns: BTreeMap<&str, Shared> = BTreeMap::new();
    for we in &model.workload_entries {
        let ns = we.meta.namespace.as_str();
        let (services, virtual_hosts) = by_ns
            .entry(ns)
            .or_insert_with(|| {
                (
                    Arc::new(registry.visible_from(ns)),
                    Arc::new(routes::virtual_hosts(model, &registry, ns, &mut notes)),
                )
            })
            .clone();
        nodes.insert(
            node_id(we),
            ProxyResources {
                workload: Some(peer::workload(model, we, placement)),
                services,
                virtual_hosts,
                mesh_settings: Some(mesh.clone()),
                authorization_policies: authz::authorization(model, we),
                request_authentications: authz::authentication(model, we),
            },
        );
    }
    notes.sort();
    notes.dedup();
    Translation { nodes, notes }
}

fn mesh_settings(model: &Model) -> MeshSettings {
    let mode = match model.mesh.outbound_mode() {
        OutboundMode::AllowAny => outbound_traffic_policy::Mode::AllowAny,
        OutboundMode::RegistryOnly => outbound_traffic_policy::Mode::RegistryOnly,
    };
    MeshSettings {
        outbound_traffic_policy: Some(OutboundTrafficPolicy { mode: mode as i32 }),
        settings: Some(Settings {
            access_log: Some(
                model
                    .mesh
                    .access_logging
                    .as_ref()
                    .and_then(|a| a.enabled)
                    .unwrap_or(true),
            ),
            access_log_fields: model
                .mesh
                .access_logging
                .as_ref()
                .and_then(|a| a.fields.clone())
                .unwrap_or_default(),
            istio_metrics: model.mesh.metrics.as_ref().and_then(|m| m.enabled),
            reset_denied_streams: model.mesh.reset_denied_streams,
            tracing: model.mesh.tracing.as_ref().map(|t| Tracing {
                sampling: Some(model.mesh.tracing_sampling()),
                otlp_endpoint: t.otlp_endpoint.clone().unwrap_or_default(),
                protocol: match t.protocol {
                    Some(OtlpProtocol::Http) => halyard_xds::tracing::Protocol::Http,
                    _ => halyard_xds::tracing::Protocol::Grpc,
                } as i32,
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests;
