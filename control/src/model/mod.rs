//! The control server's input model: Istio resources (and Halyard's `MeshConfig`) read from a
//! [`ModelSource`] — today a directory of multi-document YAML ([`DirectorySource`]), with
//! every problem reported at its [`Origin`] (`file:line`).
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
mod source;
mod validate;
pub mod values;

pub use error::{Diagnostic, FieldPath, Origin, ResourceId, Severity, Source};
pub use load::load_dir;
pub use mesh::MeshConfig;
pub use meta::Meta;
pub use networking::{DestinationRule, ServiceEntry, VirtualService, WorkloadEntry};
pub use security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
pub use source::{DirectorySource, ModelSource};
pub use validate::{resolve_host, serving_ports};
pub(crate) use values::{exported_to, selects};

/// One loaded resource: its metadata, its typed spec, and where it came from.
#[derive(Debug, Clone)]
pub struct Doc<T> {
    /// Name, namespace (defaulted to `default`), labels, annotations.
    pub meta: Meta,
    /// The `spec`.
    pub spec: T,
    /// Where the document came from (file and line), with its text.
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::networking::{Location, Resolution, SimpleLb, TlsMode};
    use super::security::{Action, MtlsMode};
    use super::*;

    fn valid() -> (Model, Vec<Diagnostic>) {
        load_dir(Path::new("tests/manifests/valid"))
    }

    #[test]
    fn the_valid_manifests_load_typed() {
        let (model, diags) = valid();
        assert!(diags.is_empty(), "{diags:#?}");
        assert_eq!(model.service_entries.len(), 7);
        assert_eq!(model.workload_entries.len(), 7);
        assert_eq!(model.virtual_services.len(), 7);
        assert_eq!(model.destination_rules.len(), 5);
        assert_eq!(model.peer_authentications.len(), 3);
        assert_eq!(model.authorization_policies.len(), 7);
        assert_eq!(model.request_authentications.len(), 1);
        assert_eq!(model.len(), 38);

        let reviews = model
            .virtual_services
            .iter()
            .find(|d| d.meta.name == "reviews")
            .unwrap_or_else(|| panic!("no reviews VirtualService"));
        assert_eq!(reviews.meta.namespace, "bookinfo");
        let Origin::File { file, line } = &reviews.source.origin else {
            panic!("{:?} is not a file", reviews.source.origin);
        };
        assert!(file.ends_with("bookinfo/virtual-services.yaml"));
        assert_eq!(*line, 2);
        let canary = &reviews.spec.http[0];
        let header = &canary.matches[0].headers["end-user"];
        assert_eq!(header.exact.as_deref(), Some("jason"));
        let split: Vec<(Option<&str>, Option<i32>)> = reviews.spec.http[1]
            .route
            .iter()
            .map(|d| {
                (
                    d.destination.as_ref().and_then(|x| x.subset.as_deref()),
                    d.weight,
                )
            })
            .collect();
        assert_eq!(split, vec![(Some("v1"), Some(90)), (Some("v3"), Some(10))]);
        let timeout = reviews.spec.http[1].timeout.as_ref().map(|t| t.to_std());
        assert_eq!(timeout, Some(Ok(std::time::Duration::from_millis(500))));

        let mongodb = model
            .service_entries
            .iter()
            .find(|d| d.meta.name == "mongodb")
            .unwrap_or_else(|| panic!("no mongodb ServiceEntry"));
        assert_eq!(mongodb.spec.location(), Location::MeshInternal);
        assert_eq!(mongodb.spec.resolution(), Resolution::Static);
        assert_eq!(mongodb.spec.endpoints[0].ports["mongo"], 27017);

        let details = model
            .destination_rules
            .iter()
            .find(|d| d.meta.name == "details")
            .unwrap_or_else(|| panic!("no details DestinationRule"));
        let tp = details.spec.traffic_policy.as_ref();
        let od = tp.and_then(|t| t.outlier_detection.as_ref());
        assert_eq!(od.and_then(|o| o.consecutive_5xx_errors), Some(7));
        assert_eq!(
            tp.and_then(|t| t.tls.as_ref()).and_then(|t| t.mode),
            Some(TlsMode::IstioMutual)
        );
        let port_lb = tp
            .and_then(|t| t.port_level_settings[0].load_balancer.as_ref())
            .and_then(|lb| lb.simple);
        assert_eq!(port_lb, Some(SimpleLb::Random));

        let finance = model
            .peer_authentications
            .iter()
            .find(|d| d.meta.name == "finance")
            .unwrap_or_else(|| panic!("no finance PeerAuthentication"));
        assert_eq!(
            finance.spec.port_level_mtls["8080"].mode,
            Some(MtlsMode::Disable)
        );

        let deny = model
            .authorization_policies
            .iter()
            .find(|d| d.meta.name == "deny-all")
            .unwrap_or_else(|| panic!("no deny-all"));
        assert_eq!(deny.spec.action(), Action::Deny);
        assert_eq!(deny.spec.rules.len(), 1);
        let nothing = model
            .authorization_policies
            .iter()
            .find(|d| d.meta.name == "allow-nothing")
            .unwrap_or_else(|| panic!("no allow-nothing"));
        assert_eq!(nothing.spec.action(), Action::Allow);
        assert!(nothing.spec.rules.is_empty());

        assert_eq!(model.mesh.outbound_mode(), mesh::OutboundMode::RegistryOnly);
        assert_eq!(model.mesh.tracing_sampling(), 10.0);
        assert_eq!(
            model.mesh_doc.as_ref().map(|(m, _)| m.name.as_str()),
            Some("mesh")
        );
    }

    #[test]
    fn no_mesh_config_means_defaults() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (model, diags) = load_dir(dir.path());
        assert!(diags.is_empty());
        assert!(model.is_empty());
        assert_eq!(model.mesh.trust_domain(), mesh::DEFAULT_TRUST_DOMAIN);
        assert!(model.mesh_doc.is_none());
    }

    #[test]
    fn several_problems_in_one_document_are_all_reported() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.path().join("vs.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: Bad_Name\nspec:\n  hosts: [a.example.com]\n  http:\n  - timeout: soon\n    route:\n    - destination: {host: a.example.com}\n      weight: 60\n    - destination: {host: a.example.com}\n      weight: 60\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (model, diags) = load_dir(dir.path());
        let shown: Vec<String> = diags
            .iter()
            .map(|d| match &d.origin {
                Origin::File { line, .. } => format!("{line}: {}", d.path),
                other => format!("{other}: {}", d.path),
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                "4: metadata.name",
                "8: spec.http[0].timeout",
                "9: spec.http[0].route",
                "10: spec.http[0].route[0].destination.host",
                "12: spec.http[0].route[1].destination.host",
            ]
        );
        // Still loaded: everything that parses is kept.
        assert_eq!(model.virtual_services.len(), 1);
    }
}
