//! xDS resources in general: packing messages to and from `google.protobuf.Any` (the
//! `pbjson_types::Any` the rest of this crate uses), the named and versioned [`Resource`] both
//! ends keep, and the content hashes used as versions. Which types exist, and how each is
//! named, is the [registry](super::registry)'s.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prost::Message;

use super::proto::envoy::service::discovery::v3 as wire;
use super::registry::{bare_name, Naming};

/// `google.protobuf.Any` as used throughout this crate.
pub type Any = pbjson_types::Any;

/// The type URL of `envoy.service.discovery.v3.Resource`, the wrapper that gives a
/// state-of-the-world resource its name and version.
pub const RESOURCE_WRAPPER_TYPE: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// Resource state as both ends keep it: type URL → resource name → resource.
pub type State = BTreeMap<String, BTreeMap<String, Resource>>;

/// A message that travels over xDS as a resource of its own type; implemented for each type
/// of the [registry](super::registry).
pub trait XdsResource: Message + Default + serde::Serialize {
    /// `type.googleapis.com/<full message name>`.
    const TYPE_URL: &'static str;
    /// How resources of this type are named.
    const NAMING: Naming<Self>;
}

/// Why an `Any` could not be turned into a message or resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    /// The `Any` holds another type than the one wanted.
    #[error("expected a resource of type {expected}, got {got}")]
    WrongType {
        /// The type URL wanted.
        expected: String,
        /// The type URL found.
        got: String,
    },
    /// The bytes are not a valid encoding of the message.
    #[error("cannot decode {type_url}: {message}")]
    Decode {
        /// The type URL of the message.
        type_url: String,
        /// The decoder's complaint.
        message: String,
    },
    /// A resource came without a name, or with none that could be derived.
    #[error("a resource of type {0} has no name")]
    Unnamed(String),
    /// A resource wrapper came without its resource.
    #[error("resource {0:?} has no body")]
    NoBody(String),
}

/// Packs a message into an `Any` with its type URL.
pub fn pack<M: XdsResource>(msg: &M) -> Any {
    Any {
        type_url: M::TYPE_URL.to_string(),
        value: msg.encode_to_vec().into(),
    }
}

/// Unpacks an `Any` holding an `M`.
pub fn unpack<M: XdsResource>(any: &Any) -> Result<M, UnpackError> {
    if any.type_url != M::TYPE_URL {
        return Err(UnpackError::WrongType {
            expected: M::TYPE_URL.to_string(),
            got: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_ref()).map_err(|e| UnpackError::Decode {
        type_url: any.type_url.clone(),
        message: e.to_string(),
    })
}

/// One named, versioned resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Unique among the resources of its type for one node.
    pub name: String,
    /// Opaque version; equal versions mean equal content.
    pub version: String,
    /// The resource itself.
    pub body: Any,
}

impl Resource {
    /// A resource with an explicit version.
    pub fn new(name: impl Into<String>, version: impl Into<String>, body: Any) -> Self {
        Resource {
            name: name.into(),
            version: version.into(),
            body,
        }
    }

    /// A resource whose version is a hash of the body's bytes. Use [`Resource::from_message`]
    /// for messages with map fields: their encoding order is not stable.
    pub fn from_any(name: impl Into<String>, body: Any) -> Self {
        let version = hash_hex(&[body.type_url.as_bytes(), &[0], body.value.as_ref()]);
        Resource {
            name: name.into(),
            version,
            body,
        }
    }

    /// Packs `msg` with a version that is a hash of its content (its canonical JSON form, with
    /// map keys sorted), so equal content gets the same version in every process.
    pub fn from_message<M: XdsResource>(name: impl Into<String>, msg: &M) -> Self {
        let canonical = serde_json::to_value(msg)
            .map(|v| canonical_json(&v))
            .unwrap_or_else(|_| String::from_utf8_lossy(&msg.encode_to_vec()).into_owned());
        let version = hash_hex(&[M::TYPE_URL.as_bytes(), &[0], canonical.as_bytes()]);
        Resource {
            name: name.into(),
            version,
            body: pack(msg),
        }
    }

    /// Decodes the body as an `M`.
    pub fn decode<M: XdsResource>(&self) -> Result<M, UnpackError> {
        unpack(&self.body)
    }

    /// The resource as Envoy's `Resource` message (delta responses carry these).
    pub fn to_wire(&self) -> wire::Resource {
        wire::Resource {
            version: self.version.clone(),
            resource: Some(self.body.clone()),
            name: self.name.clone(),
            aliases: Vec::new(),
        }
    }

    /// The resource wrapped in an `Any` of `envoy.service.discovery.v3.Resource` (how state-of-
    /// the-world responses carry a name and version with each resource).
    pub fn to_wrapped_any(&self) -> Any {
        Any {
            type_url: RESOURCE_WRAPPER_TYPE.to_string(),
            value: self.to_wire().encode_to_vec().into(),
        }
    }

    /// Reads a resource of `type_url` from Envoy's `Resource` message.
    pub fn from_wire(type_url: &str, r: wire::Resource) -> Result<Self, UnpackError> {
        if r.name.is_empty() {
            return Err(UnpackError::Unnamed(type_url.to_string()));
        }
        let body = r
            .resource
            .ok_or_else(|| UnpackError::NoBody(r.name.clone()))?;
        if body.type_url != type_url {
            return Err(UnpackError::WrongType {
                expected: type_url.to_string(),
                got: body.type_url,
            });
        }
        let version = if r.version.is_empty() {
            Resource::from_any(&r.name, body.clone()).version
        } else {
            r.version
        };
        Ok(Resource {
            name: r.name,
            version,
            body,
        })
    }

    /// Reads one resource of a state-of-the-world response of `type_url`: either wrapped in an
    /// `envoy.service.discovery.v3.Resource`, or bare, its name then derived as its type's
    /// [`Naming`] says (Service, VirtualHost and the policies by `name`, MeshSettings is
    /// "mesh", Workload is `node_id`).
    pub fn from_sotw_any(type_url: &str, node_id: &str, any: Any) -> Result<Self, UnpackError> {
        if any.type_url == RESOURCE_WRAPPER_TYPE {
            let r =
                wire::Resource::decode(any.value.as_ref()).map_err(|e| UnpackError::Decode {
                    type_url: any.type_url.clone(),
                    message: e.to_string(),
                })?;
            return Resource::from_wire(type_url, r);
        }
        if any.type_url != type_url {
            return Err(UnpackError::WrongType {
                expected: type_url.to_string(),
                got: any.type_url,
            });
        }
        let name = bare_name(type_url, node_id, &any)?;
        if name.is_empty() {
            return Err(UnpackError::Unnamed(type_url.to_string()));
        }
        Ok(Resource::from_any(name, any))
    }
}

/// The version of a whole set of resources: a hash of their names and versions.
pub fn set_version<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for r in resources {
        ctx.update(r.name.as_bytes());
        ctx.update(&[0]);
        ctx.update(r.version.as_bytes());
        ctx.update(&[0]);
    }
    hex16(ctx.finish().as_ref())
}

fn hash_hex(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    hex16(ctx.finish().as_ref())
}

/// The first 8 bytes of a digest as 16 hex digits.
fn hex16(digest: &[u8]) -> String {
    let mut s = String::with_capacity(16);
    for b in digest.iter().take(8) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// JSON text with object keys sorted at every level, whatever order the map had.
fn canonical_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(*k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::registry::{SERVICE_TYPE, VIRTUAL_HOST_TYPE, WORKLOAD_TYPE};
    use crate::{Service, VirtualHost, Workload};
    use std::collections::HashMap;

    #[test]
    fn pack_unpack_round_trip_and_wrong_type() {
        let svc = Service {
            name: "reviews".into(),
            hosts: vec!["reviews".into()],
            ..Default::default()
        };
        let any = pack(&svc);
        assert_eq!(any.type_url, SERVICE_TYPE);
        assert_eq!(unpack::<Service>(&any).unwrap(), svc);
        assert!(matches!(
            unpack::<VirtualHost>(&any),
            Err(UnpackError::WrongType { .. })
        ));
    }

    #[test]
    fn content_version_ignores_map_order() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..50 {
            a.insert(format!("k{i}"), format!("v{i}"));
        }
        for i in (0..50).rev() {
            b.insert(format!("k{i}"), format!("v{i}"));
        }
        let wa = Workload {
            name: "w".into(),
            labels: a,
            ..Default::default()
        };
        let wb = Workload {
            name: "w".into(),
            labels: b,
            ..Default::default()
        };
        let ra = Resource::from_message("n", &wa);
        let rb = Resource::from_message("n", &wb);
        assert_eq!(ra.version, rb.version);
        let wc = Workload {
            name: "other".into(),
            ..Default::default()
        };
        assert_ne!(ra.version, Resource::from_message("n", &wc).version);
        assert_eq!(ra.version.len(), 16);
    }

    #[test]
    fn sotw_any_wrapped_or_bare() {
        let svc = Service {
            name: "ratings".into(),
            ..Default::default()
        };
        let r = Resource::from_message("ratings", &svc);
        let back = Resource::from_sotw_any(SERVICE_TYPE, "node", r.to_wrapped_any()).unwrap();
        assert_eq!(back, r);
        let bare = Resource::from_sotw_any(SERVICE_TYPE, "node", pack(&svc)).unwrap();
        assert_eq!(bare.name, "ratings");
        let w =
            Resource::from_sotw_any(WORKLOAD_TYPE, "node-7", pack(&Workload::default())).unwrap();
        assert_eq!(w.name, "node-7");
        let err = Resource::from_sotw_any(VIRTUAL_HOST_TYPE, "n", r.to_wrapped_any());
        assert!(matches!(err, Err(UnpackError::WrongType { .. })), "{err:?}");
        let unnamed = Resource::from_sotw_any(SERVICE_TYPE, "n", pack(&Service::default()));
        assert!(matches!(unnamed, Err(UnpackError::Unnamed(_))));
    }

    #[test]
    fn set_version_depends_on_names_and_versions() {
        let a = Resource::new("a", "1", Any::default());
        let b = Resource::new("b", "1", Any::default());
        let b2 = Resource::new("b", "2", Any::default());
        assert_ne!(set_version([&a, &b]), set_version([&a, &b2]));
        assert_ne!(set_version([&a]), set_version([&a, &b]));
        assert_eq!(set_version([&a, &b]), set_version([&a, &b]));
    }
}
