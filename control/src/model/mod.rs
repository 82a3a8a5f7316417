//! The control server's input model: Istio resources (and Halyard's `MeshConfig`) read from a
//! directory of multi-document YAML, with every problem reported as `file:line`.
//!
//! [`load_dir`] reads everything it can and returns the [`Model`] with all [`Diagnostic`]s:
//! YAML syntax, unknown kinds and fields, wrong types, missing and invalid values, features
//! Halyard does not implement (`unsupported: ...`), duplicates and dangling references.

pub mod error;
mod load;
pub mod mesh;
pub mod meta;
pub mod networking;
pub mod security;
mod validate;
pub mod values;

pub use error::{Diagnostic, FieldPath, ResourceId, Severity, Source};
pub use load::load_dir;
pub use mesh::MeshConfig;
pub use meta::Meta;
pub use networking::{DestinationRule, ServiceEntry, VirtualService, WorkloadEntry};
pub use security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

/// One loaded resource: its metadata, its typed spec, and where it came from.
#[derive(Debug, Clone)]
pub struct Doc<T> {
    /// Name, namespace (defaulted to `default`), labels, annotations.
    pub meta: Meta,
    /// The `spec`.
    pub spec: T,
    /// File and line of the document.
    pub source: Source,
}

/// The kinds Halyard reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication,
    /// `halyard.dev` MeshConfig.
    MeshConfig,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::MeshConfig,
    ];

    /// The `kind` string.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::MeshConfig => "MeshConfig",
        }
    }

    /// The API group of `apiVersion`.
    pub fn group(self) -> &'static str {
        match self {
            Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::VirtualService
            | Kind::DestinationRule => "networking.istio.io",
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::MeshConfig => "halyard.dev",
        }
    }

    /// The versions accepted, preferred first.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "networking.istio.io" => &["v1", "v1beta1", "v1alpha3"],
            "security.istio.io" => &["v1", "v1beta1"],
            _ => &["v1alpha1"],
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Everything loaded from a directory.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// ServiceEntries: the service registry.
    pub service_entries: Vec<Doc<ServiceEntry>>,
    /// WorkloadEntries: workloads (VMs) selected by ServiceEntries.
    pub workload_entries: Vec<Doc<WorkloadEntry>>,
    /// VirtualServices: routing.
    pub virtual_services: Vec<Doc<VirtualService>>,
    /// DestinationRules: subsets and traffic policies.
    pub destination_rules: Vec<Doc<DestinationRule>>,
    /// PeerAuthentications: mTLS modes.
    pub peer_authentications: Vec<Doc<PeerAuthentication>>,
    /// AuthorizationPolicies: RBAC.
    pub authorization_policies: Vec<Doc<AuthorizationPolicy>>,
    /// RequestAuthentications: JWT.
    pub request_authentications: Vec<Doc<RequestAuthentication>>,
    /// The MeshConfig's spec, or the defaults when there is none.
    pub mesh: MeshConfig,
    /// The MeshConfig's metadata and source, when there is one.
    pub mesh_doc: Option<(Meta, Source)>,
}

impl Model {
    /// How many resources were loaded (the MeshConfig included, when given).
    pub fn len(&self) -> usize {
        self.service_entries.len()
            + self.workload_entries.len()
            + self.virtual_services.len()
            + self.destination_rules.len()
            + self.peer_authentications.len()
            + self.authorization_policies.len()
            + self.request_authentications.len()
            + usize::from(self.mesh_doc.is_some())
    }

    /// Whether nothing was loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The identifier `Kind/namespace/name` of a loaded document.
pub(crate) fn resource_id(kind: Kind, meta: &Meta) -> ResourceId {
    ResourceId {
        kind: kind.name().to_string(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    }
}
