//! Peer metadata exchange (Istio `x-envoy-peer-metadata`), so metrics can name the workload on the other side.
//!
//! Istio's sidecars tell each other who they are with two HTTP headers, added to requests on
//! the outbound side and to responses on the inbound side:
//!
//! * `x-envoy-peer-metadata-id`: the node id, `sidecar~<ip>~<workload>.<namespace>~<namespace>.svc.cluster.local`;
//! * `x-envoy-peer-metadata`: base64 (RFC 4648, padded) of a protobuf-encoded
//!   `google.protobuf.Struct` holding the node metadata Istio's Envoy writes: `NAME`,
//!   `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID`, `MESH_ID`, `INSTANCE_IPS` and `LABELS`, a
//!   nested Struct of the workload labels that name it (`app`, `version`,
//!   `service.istio.io/canonical-name`, `service.istio.io/canonical-revision`, and the
//!   `app.kubernetes.io/{name,version}` labels when present).
//!
//! [`PeerHeaders`] computes the two values this workload sends once per configuration;
//! [`decode`] reads a peer's metadata header into a [`WorkloadMeta`], with a small per-thread
//! cache so that a steady peer costs one hash lookup. A peer is not trusted: its values become
//! metric labels only when they look like Kubernetes names, anything else becomes `unknown`.

mod base64;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use pbjson_types::value::Kind;
use pbjson_types::{Struct, Value};
use prost::Message;

pub use self::base64::{base64_decode, base64_encode};

/// `x-envoy-peer-metadata`: base64 of the protobuf-encoded node metadata Struct.
pub const PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
/// `x-envoy-peer-metadata-id`: the sender's node id.
pub const PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");
/// Longest metadata header [`decode`] accepts, in bytes.
pub const MAX_METADATA_LEN: usize = 8 * 1024;
/// Longest peer-supplied value accepted as a label value (a DNS name's limit).
pub const MAX_LABEL_VALUE_LEN: usize = 253;

const UNKNOWN: &str = "unknown";
const LATEST: &str = "latest";

// Keys of Istio's node metadata.
const NAME: &str = "NAME";
const NAMESPACE: &str = "NAMESPACE";
const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
const CLUSTER_ID: &str = "CLUSTER_ID";
const MESH_ID: &str = "MESH_ID";
const INSTANCE_IPS: &str = "INSTANCE_IPS";
const LABELS: &str = "LABELS";

// Workload labels that name a workload.
const APP: &str = "app";
const VERSION: &str = "version";
const K8S_NAME: &str = "app.kubernetes.io/name";
const K8S_VERSION: &str = "app.kubernetes.io/version";
const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
const NAMING_LABELS: [&str; 6] = [
    APP,
    VERSION,
    K8S_NAME,
    K8S_VERSION,
    CANONICAL_NAME,
    CANONICAL_REVISION,
];

/// Who a workload is, as metric labels see it ("unknown" for what is not known).
///
/// Immutable once made, and every value made carries an id of its own (kept by clones), so
/// that the metrics' per-thread caches can key a label set by ids instead of by its text.
#[derive(Clone, Debug)]
pub struct WorkloadMeta(Arc<Meta>);

/// What a [`WorkloadMeta`] shares with its clones.
#[derive(Debug)]
struct Meta {
    id: u64,
    /// workload, namespace, app, version, canonical service, canonical revision.
    values: [Box<str>; 6],
}

/// The next [`WorkloadMeta`] id; ids are never reused.
static NEXT_META_ID: AtomicU64 = AtomicU64::new(1);

impl PartialEq for WorkloadMeta {
    fn eq(&self, other: &Self) -> bool {
        self.values() == other.values()
    }
}

impl Eq for WorkloadMeta {}

impl WorkloadMeta {
    /// From the six values as they are: workload, namespace, app, version, canonical service,
    /// canonical revision.
    pub fn new(values: [&str; 6]) -> Self {
        Self(Arc::new(Meta {
            id: NEXT_META_ID.fetch_add(1, Ordering::Relaxed),
            values: values.map(Box::from),
        }))
    }

    /// All "unknown" except canonical_revision "latest" (Istio's default).
    pub fn unknown() -> Self {
        Self::new([UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, LATEST])
    }

    /// Identifies this value and its clones (no other value has it).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Workload name (e.g. the Deployment), `source_workload`/`destination_workload`.
    pub fn workload(&self) -> &str {
        &self.0.values[0]
    }

    /// Namespace of the workload.
    pub fn namespace(&self) -> &str {
        &self.0.values[1]
    }

    /// The `app` label (else `app.kubernetes.io/name`).
    pub fn app(&self) -> &str {
        &self.0.values[2]
    }

    /// The `version` label (else `app.kubernetes.io/version`).
    pub fn version(&self) -> &str {
        &self.0.values[3]
    }

    /// Istio's canonical service name.
    pub fn canonical_service(&self) -> &str {
        &self.0.values[4]
    }

    /// Istio's canonical revision (`latest` when not labelled).
    pub fn canonical_revision(&self) -> &str {
        &self.0.values[5]
    }

    /// The six values, in the order of [`WorkloadMeta::new`].
    pub fn values(&self) -> [&str; 6] {
        let [a, b, c, d, e, f] = &self.0.values;
        [a, b, c, d, e, f]
    }

    /// From a workload's name, namespace and labels, with Istio's label precedence: app = `app`
    /// else `app.kubernetes.io/name`; version = `version` else `app.kubernetes.io/version`;
    /// canonical service = `service.istio.io/canonical-name` else `app.kubernetes.io/name` else
    /// `app` else workload name; canonical revision = `service.istio.io/canonical-revision` else
    /// `app.kubernetes.io/version` else `version` else "latest". Empty → unknown.
    pub fn from_labels(workload: &str, namespace: &str, labels: &HashMap<String, String>) -> Self {
        Self::from_parts(workload, namespace, |key| {
            labels
                .get(key)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        })
    }

    /// Applies the precedence rules over a label lookup that yields only non-empty values.
    fn from_parts<'a>(
        workload: &'a str,
        namespace: &'a str,
        label: impl Fn(&str) -> Option<&'a str>,
    ) -> Self {
        let workload = Some(workload).filter(|w| !w.is_empty());
        let namespace = Some(namespace).filter(|n| !n.is_empty());
        let app = label(APP).or_else(|| label(K8S_NAME));
        let version = label(VERSION).or_else(|| label(K8S_VERSION));
        let canonical_service = label(CANONICAL_NAME)
            .or_else(|| label(K8S_NAME))
            .or_else(|| label(APP))
            .or(workload);
        let canonical_revision = label(CANONICAL_REVISION)
            .or_else(|| label(K8S_VERSION))
            .or_else(|| label(VERSION))
            .unwrap_or(LATEST);
        let known = |v: Option<&'a str>| v.unwrap_or(UNKNOWN);
        Self::new([
            known(workload),
            known(namespace),
            known(app),
            known(version),
            known(canonical_service),
            canonical_revision,
        ])
    }
}

/// The two header values this workload sends, computed once per config.
#[derive(Clone, Debug)]
pub struct PeerHeaders {
    /// Value of `x-envoy-peer-metadata-id`.
    pub id: HeaderValue,
    /// Value of `x-envoy-peer-metadata`.
    pub metadata: HeaderValue,
}

impl PeerHeaders {
    /// Headers naming `meta`; `labels` are the workload's labels (only those that name it are
    /// sent), `ip` its address. No `CLUSTER_ID` or `MESH_ID` is sent.
    pub fn new(meta: &WorkloadMeta, labels: &HashMap<String, String>, ip: Option<IpAddr>) -> Self {
        Self::with_cluster(meta, labels, ip, "", "")
    }

    /// As [`PeerHeaders::new`], also sending Istio's `CLUSTER_ID` and `MESH_ID` (empty: left out).
    pub fn with_cluster(
        meta: &WorkloadMeta,
        labels: &HashMap<String, String>,
        ip: Option<IpAddr>,
        cluster_id: &str,
        mesh_id: &str,
    ) -> Self {
        let known = |v: &str| v != UNKNOWN && !v.is_empty();
        // The naming labels as given, then the values derived from them, so that a peer
        // reading only the four keys Istio reads gets the same answer as we did.
        let mut label_fields: BTreeMap<&str, &str> = NAMING_LABELS
            .iter()
            .filter_map(|&k| Some((k, labels.get(k).filter(|v| !v.is_empty())?.as_str())))
            .collect();
        for (key, value) in [
            (APP, meta.app()),
            (VERSION, meta.version()),
            (CANONICAL_NAME, meta.canonical_service()),
            (CANONICAL_REVISION, meta.canonical_revision()),
        ] {
            if known(value) {
                label_fields.insert(key, value);
            }
        }
        let label_struct = proto::encode_struct(
            label_fields
                .iter()
                .map(|(k, v)| (*k, proto::string_value(v))),
        );

        let ip_text = ip.map(|ip| ip.to_string()).unwrap_or_default();
        let mut fields: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for (key, value) in [
            (NAME, meta.workload()),
            (WORKLOAD_NAME, meta.workload()),
            (NAMESPACE, meta.namespace()),
            (CLUSTER_ID, cluster_id),
            (MESH_ID, mesh_id),
            (INSTANCE_IPS, &ip_text),
        ] {
            if known(value) {
                fields.insert(key, proto::string_value(value));
            }
        }
        fields.insert(LABELS, proto::struct_value(&label_struct));
        let bytes = proto::encode_struct(fields.iter().map(|(k, v)| (*k, v.clone())));
        let metadata = HeaderValue::try_from(base64_encode(&bytes))
            .unwrap_or_else(|_| HeaderValue::from_static(""));

        let id: String = format!(
            "sidecar~{ip_text}~{workload}.{ns}~{ns}.svc.cluster.local",
            workload = meta.workload(),
            ns = meta.namespace(),
        )
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-/~:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
        let id = HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("sidecar"));
        Self { id, metadata }
    }
}

/// Entries the per-thread decode cache holds before it is cleared.
const DECODE_CACHE_MAX: usize = 64;

thread_local! {
    /// Header bytes → what they decoded to (including "nothing"), per thread; hashed with
    /// foldhash (randomly seeded), as the map is small and bounded.
    static DECODED: RefCell<HashMap<Box<[u8]>, Option<WorkloadMeta>, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::with_capacity_and_hasher(DECODE_CACHE_MAX, Default::default()));
}

/// Reads a peer's metadata header; None when absent, too big (> 8 KiB), not base64, not a
/// Struct. Values that are not plausible label values (longer than 253 bytes, or outside
/// [A-Za-z0-9._-/]) become "unknown" — a peer must not be able to inject arbitrary label text.
///
/// "Absent" includes an empty header and a Struct with none of Istio's node metadata keys.
/// Results are cached per thread (64 entries, keyed by the header bytes).
pub fn decode(value: &HeaderValue) -> Option<WorkloadMeta> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_METADATA_LEN {
        return None;
    }
    DECODED
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return decode_uncached(bytes);
            };
            if let Some(hit) = cache.get(bytes) {
                return hit.clone();
            }
            let meta = decode_uncached(bytes);
            if cache.len() >= DECODE_CACHE_MAX {
                cache.clear();
            }
            cache.insert(bytes.into(), meta.clone());
            meta
        })
        .unwrap_or_else(|_| decode_uncached(bytes))
}

/// [`decode`] without the cache.
fn decode_uncached(bytes: &[u8]) -> Option<WorkloadMeta> {
    if bytes.is_empty() || bytes.len() > MAX_METADATA_LEN {
        return None;
    }
    let raw = base64_decode(bytes)?;
    let node = Struct::decode(raw.as_slice()).ok()?;
    let recognised = [NAME, NAMESPACE, WORKLOAD_NAME, LABELS, CLUSTER_ID, MESH_ID]
        .iter()
        .any(|k| node.fields.contains_key(*k));
    if !recognised {
        return None;
    }
    let field = |key: &str| node.fields.get(key).and_then(plausible_string);
    let labels = match node.fields.get(LABELS).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(labels)) => Some(labels),
        _ => None,
    };
    let label = |key: &str| labels?.fields.get(key).and_then(plausible_string);
    Some(WorkloadMeta::from_parts(
        field(WORKLOAD_NAME).unwrap_or(""),
        field(NAMESPACE).unwrap_or(""),
        label,
    ))
}

/// The string in `value` when it is a plausible label value; None for anything else.
fn plausible_string(value: &Value) -> Option<&str> {
    match &value.kind {
        Some(Kind::StringValue(s)) if is_plausible(s) => Some(s),
        _ => None,
    }
}

/// Non-empty, at most 253 bytes, only `[A-Za-z0-9._-/]`.
fn is_plausible(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_VALUE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Just enough protobuf to write a `google.protobuf.Struct` deterministically (keys in the
/// order given, which callers keep sorted, as Istio's deterministic serialization does).
mod proto {
    const LEN: u64 = 2;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        varint(out, field << 3 | LEN);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    /// An encoded `Value` holding `string_value` (field 3).
    pub(super) fn string_value(s: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len() + 3);
        bytes_field(&mut out, 3, s.as_bytes());
        out
    }

    /// An encoded `Value` holding `struct_value` (field 5).
    pub(super) fn struct_value(encoded_struct: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(encoded_struct.len() + 4);
        bytes_field(&mut out, 5, encoded_struct);
        out
    }

    /// An encoded `Struct`: `fields` (field 1) is a map, each entry a message of key (1) and
    /// encoded `Value` (2).
    pub(super) fn encode_struct<'a>(fields: impl Iterator<Item = (&'a str, Vec<u8>)>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut entry = Vec::new();
        for (key, value) in fields {
            entry.clear();
            bytes_field(&mut entry, 1, key.as_bytes());
            bytes_field(&mut entry, 2, &value);
            bytes_field(&mut out, 1, &entry);
        }
        out
    }
}
