//! `metadata`: Kubernetes object metadata, of which Halyard uses name, namespace, labels and
//! annotations.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::{Cx, FieldPath};
use super::values::{check_labels, is_dns_label, is_dns_subdomain};

/// The namespace of a resource that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `metadata` as written. Fields that Kubernetes fills in (`uid`, `resourceVersion`, ...)
/// are accepted so that `kubectl get -o yaml` output loads, and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The resource's name (required).
    pub name: Option<String>,
    /// The namespace (default `default`).
    pub namespace: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Set by Kubernetes; ignored.
    pub uid: Option<serde_yaml::Value>,
    /// Set by Kubernetes; ignored.
    pub resource_version: Option<serde_yaml::Value>,
    /// Set by Kubernetes; ignored.
    pub generation: Option<serde_yaml::Value>,
    /// Set by Kubernetes; ignored.
    pub creation_timestamp: Option<serde_yaml::Value>,
    /// Set by Kubernetes; ignored.
    pub managed_fields: Option<serde_yaml::Value>,
    /// Set by Kubernetes; ignored.
    pub owner_references: Option<serde_yaml::Value>,
    /// Set by Kubernetes; ignored.
    pub finalizers: Option<serde_yaml::Value>,
}

/// The metadata Halyard keeps: name, namespace (defaulted), labels and annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when not given.
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The kept metadata (namespace defaulted).
    pub fn to_meta(&self) -> Meta {
        Meta {
            name: self.name.clone().unwrap_or_default(),
            namespace: self
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
        }
    }

    /// Checks name, namespace and labels.
    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        let p = FieldPath::root().f("metadata");
        match self.name.as_deref() {
            None | Some("") => cx.required(&p.f("name")),
            Some(n) if !is_dns_subdomain(n) => cx.error(
                &p.f("name"),
                format!("invalid name `{n}`: want lowercase letters, digits, `-` and `.` (a DNS-1123 subdomain)"),
            ),
            Some(_) => {}
        }
        if let Some(ns) = self.namespace.as_deref() {
            if !is_dns_label(ns) {
                cx.error(
                    &p.f("namespace"),
                    format!("invalid namespace `{ns}`: want lowercase letters, digits and `-` (a DNS-1123 label)"),
                );
            }
        }
        check_labels(cx, &p.f("labels"), &self.labels);
    }
}
