//! The one registry of the resource types a proxy receives: [`ProxyResources`].
//!
//! Each type is one entry of the table at the end of this file: its field in
//! [`ProxyResources`], its message, its type URL and how its resources are named. Everything
//! that needs every type is derived from that table: what a proxy subscribes to
//! ([`ProxyResources::TYPE_URLS`]), how the control server encodes a node's resources
//! ([`Encoder`], [`ProxyResources::to_state`]), how a proxy decodes them
//! ([`ProxyResources::from_state`]), how a bare state-of-the-world resource gets its name
//! ([`Resource::from_sotw_any`]) and the set version a proxy reports
//! ([`ProxyResources::version_of`]). Adding a resource type is a proto message and one entry.

use std::marker::PhantomData;
use std::sync::Arc;

use super::source::ResourceMap;
use super::types::{set_version, unpack, Any, Resource, State, UnpackError, XdsResource};
use crate::{
    AuthorizationPolicy, MeshSettings, RequestAuthentication, Service, VirtualHost, Workload,
};

/// The name of the single [`MESH_SETTINGS_TYPE`] resource.
pub const MESH_SETTINGS_NAME: &str = "mesh";

/// How the resources of one type are named.
#[derive(Debug)]
pub enum Naming<M> {
    /// Each by a field of its message (its `name`).
    Field(fn(&M) -> &str),
    /// The one resource of a node, named by the node id; only the node's own is accepted.
    Node,
    /// The one resource, always of this name.
    Fixed(&'static str),
}

impl<M: XdsResource> Naming<M> {
    /// The name of the resource holding `msg` for node `node_id`.
    pub fn name(&self, msg: &M, node_id: &str) -> String {
        match self {
            Naming::Field(f) => f(msg).to_string(),
            Naming::Node => node_id.to_string(),
            Naming::Fixed(name) => (*name).to_string(),
        }
    }

    /// The name of a bare (unwrapped) resource for node `node_id`; decodes the body only when
    /// the name is in it.
    pub fn name_of_any(&self, any: &Any, node_id: &str) -> Result<String, UnpackError> {
        match self {
            Naming::Field(f) => Ok(f(&unpack::<M>(any)?).to_string()),
            Naming::Node => Ok(node_id.to_string()),
            Naming::Fixed(name) => Ok((*name).to_string()),
        }
    }
}

/// Why an xDS state does not make a proxy's resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourcesError {
    /// A resource does not decode as a message of its type.
    #[error("{type_url} resource `{name}`: {source}")]
    Decode {
        /// The resource's type URL.
        type_url: String,
        /// The resource's name.
        name: String,
        /// Why it does not decode.
        source: UnpackError,
    },
    /// A type named by the node holds another node's resource and not this node's.
    #[error("{kind} resource `{name}` is not this proxy's (node id `{node_id}`)")]
    OtherNode {
        /// The type's short name (`workload`).
        kind: String,
        /// The name of the resource found.
        name: String,
        /// This proxy's node id.
        node_id: String,
    },
}

/// How a type's messages sit in [`ProxyResources`]: at most one, a list, or a list shared by
/// several nodes.
trait Slot: Default {
    /// The message.
    type Item: XdsResource;
    /// At most one resource: decoding reads the first only.
    const SINGLE: bool;
    /// The messages held.
    fn items(&self) -> &[Self::Item];
    /// The slot holding `items` (decoded in name order).
    fn from_items(items: Vec<Self::Item>) -> Self;
    /// The address of a set that nodes share, so that it is encoded once.
    fn shared(&self) -> Option<usize> {
        None
    }
}

impl<M: XdsResource> Slot for Option<M> {
    type Item = M;
    const SINGLE: bool = true;
    fn items(&self) -> &[M] {
        self.as_slice()
    }
    fn from_items(items: Vec<M>) -> Self {
        items.into_iter().next()
    }
}

impl<M: XdsResource> Slot for Vec<M> {
    type Item = M;
    const SINGLE: bool = false;
    fn items(&self) -> &[M] {
        self
    }
    fn from_items(items: Vec<M>) -> Self {
        items
    }
}

impl<M: XdsResource> Slot for Arc<Vec<M>> {
    type Item = M;
    const SINGLE: bool = false;
    fn items(&self) -> &[M] {
        self
    }
    fn from_items(items: Vec<M>) -> Self {
        Arc::new(items)
    }
    fn shared(&self) -> Option<usize> {
        Some(Arc::as_ptr(self) as usize)
    }
}

/// Encodes the resources of many nodes, each set that nodes share (one `Arc`) only once:
/// versioning a resource hashes its content, the costly part of publishing.
#[derive(Debug, Default)]
pub struct Encoder<'a> {
    /// Type URL, address of the shared set, its encoding. The sets are borrowed for `'a`, so
    /// an address cannot be reused by another set meanwhile.
    shared: Vec<(&'static str, usize, ResourceMap)>,
    _sets: PhantomData<&'a ProxyResources>,
}

impl<'a> Encoder<'a> {
    /// An encoder that has encoded nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One type's resources for `node_id`, named by the type's [`Naming`], versioned by
    /// [`Resource::from_message`].
    fn slot<S: Slot>(&mut self, node_id: &str, slot: &'a S) -> ResourceMap {
        let naming = &<S::Item as XdsResource>::NAMING;
        let type_url = <S::Item as XdsResource>::TYPE_URL;
        // A set named by the node differs per node: never shared.
        let key = slot.shared().filter(|_| !matches!(naming, Naming::Node));
        if let Some(key) = key {
            let hit = self
                .shared
                .iter()
                .find(|(t, k, _)| *t == type_url && *k == key);
            if let Some((_, _, map)) = hit {
                return map.clone();
            }
        }
        let map: ResourceMap = slot
            .items()
            .iter()
            .map(|m| {
                let r = Resource::from_message(naming.name(m, node_id), m);
                (r.name.clone(), r)
            })
            .collect();
        if let Some(key) = key {
            self.shared.push((type_url, key, map.clone()));
        }
        map
    }
}

impl ProxyResources {
    /// The xDS state of node `node_id` (see [`Encoder::encode`]); use one [`Encoder`] for many
    /// nodes that share sets.
    pub fn to_state(&self, node_id: &str) -> State {
        Encoder::new().encode(node_id, self)
    }

    /// `workload=V,service=V,...`: the set version ([`set_version`]) of each registered type
    /// in registry order, by its short name; empty for a type the state lacks.
    pub fn version_of(state: &State) -> String {
        let parts: Vec<String> = Self::TYPE_URLS
            .iter()
            .map(|t| {
                let v = state
                    .get(*t)
                    .map(|m| set_version(m.values()))
                    .unwrap_or_default();
                format!("{}={v}", short_name(t))
            })
            .collect();
        parts.join(",")
    }
}

/// The last part of a type URL, lower case: `workload`, `virtualhost`.
fn short_name(type_url: &str) -> String {
    type_url
        .rsplit('.')
        .next()
        .unwrap_or(type_url)
        .to_ascii_lowercase()
}

/// Decodes node `node_id`'s resources of type `M` from `state`, in name order (only the first
/// when `single`). A type named by the node yields the node's own resource; when the state
/// has only another node's, that is an error.
fn decode_set<M: XdsResource>(
    state: &State,
    node_id: &str,
    single: bool,
) -> Result<Vec<M>, ResourcesError> {
    let Some(map) = state.get(M::TYPE_URL) else {
        return Ok(Vec::new());
    };
    let decode = |(name, r): (&String, &Resource)| {
        r.decode::<M>().map_err(|source| ResourcesError::Decode {
            type_url: M::TYPE_URL.to_string(),
            name: name.clone(),
            source,
        })
    };
    if matches!(M::NAMING, Naming::Node) {
        return match (map.get_key_value(node_id), map.keys().next()) {
            (Some(own), _) => Ok(vec![decode(own)?]),
            (None, Some(other)) => Err(ResourcesError::OtherNode {
                kind: short_name(M::TYPE_URL),
                name: other.clone(),
                node_id: node_id.to_string(),
            }),
            (None, None) => Ok(Vec::new()),
        };
    }
    let n = if single { 1 } else { usize::MAX };
    map.iter().take(n).map(decode).collect()
}

/// Defines the registry from its table: the type URL consts, the [`XdsResource`] impls,
/// [`ProxyResources`] and every function that goes over all types.
macro_rules! registry {
    (@slot one $m:ty) => { Option<$m> };
    (@slot list $m:ty) => { Vec<$m> };
    (@slot shared $m:ty) => { Arc<Vec<$m>> };
    ($(
        $(#[$doc:meta])+
        $field:ident: $shape:ident $msg:ty, $konst:ident = $url:literal, $naming:expr;
    )+) => {
        $(
            #[doc = concat!(
                "`", $url, "`: the type of [`ProxyResources::", stringify!($field), "`]."
            )]
            pub const $konst: &str = $url;

            impl XdsResource for $msg {
                const TYPE_URL: &'static str = $konst;
                const NAMING: Naming<Self> = $naming;
            }
        )+

        /// One proxy's resources, decoded: a field for each type a proxy receives over xDS.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct ProxyResources {
            $( $(#[$doc])+ pub $field: registry!(@slot $shape $msg), )+
        }

        impl ProxyResources {
            /// Every registered type URL, in registry order: what a proxy subscribes to.
            pub const TYPE_URLS: &'static [&'static str] = &[$($konst),+];

            /// Node `node_id`'s resources in an xDS state: a type the state lacks is empty;
            /// the first resource that does not decode, or another node's workload, is an
            /// error.
            pub fn from_state(state: &State, node_id: &str) -> Result<Self, ResourcesError> {
                Ok(ProxyResources {
                    $( $field: Slot::from_items(decode_set::<$msg>(
                        state,
                        node_id,
                        <registry!(@slot $shape $msg) as Slot>::SINGLE,
                    )?), )+
                })
            }
        }

        impl<'a> Encoder<'a> {
            /// The xDS state of node `node_id`: every registered type, a type it gets none of
            /// as an empty set.
            pub fn encode(&mut self, node_id: &str, resources: &'a ProxyResources) -> State {
                let mut state = State::new();
                $( state.insert($konst.to_string(), self.slot(node_id, &resources.$field)); )+
                state
            }
        }

        /// The name of a bare state-of-the-world resource of `type_url` for node `node_id`,
        /// by its type's [`Naming`]; empty for an unregistered type.
        pub(crate) fn bare_name(
            type_url: &str,
            node_id: &str,
            any: &Any,
        ) -> Result<String, UnpackError> {
            $(
                if type_url == $konst {
                    return <$msg as XdsResource>::NAMING.name_of_any(any, node_id);
                }
            )+
            Ok(String::new())
        }
    };
}

registry! {
    /// The workload beside the proxy: ports, labels, inbound mutual TLS modes.
    workload: one Workload,
        WORKLOAD_TYPE = "type.googleapis.com/halyard.config.v1.Workload", Naming::Node;
    /// Services the proxy may call (shared by the nodes of a namespace).
    services: shared Service,
        SERVICE_TYPE = "type.googleapis.com/halyard.config.v1.Service", Naming::Field(|s| &s.name);
    /// HTTP routing for those services' hosts (shared by the nodes of a namespace).
    virtual_hosts: shared VirtualHost,
        VIRTUAL_HOST_TYPE = "type.googleapis.com/halyard.config.v1.VirtualHost",
        Naming::Field(|v| &v.name);
    /// Proxy-wide settings.
    mesh_settings: one MeshSettings,
        MESH_SETTINGS_TYPE = "type.googleapis.com/halyard.config.v1.MeshSettings",
        Naming::Fixed(MESH_SETTINGS_NAME);
    /// Authorization policies selecting the workload (named `namespace/name`).
    authorization_policies: list AuthorizationPolicy,
        AUTHORIZATION_POLICY_TYPE = "type.googleapis.com/halyard.config.v1.AuthorizationPolicy",
        Naming::Field(|p| &p.name);
    /// JWT rules selecting the workload (named `namespace/name`).
    request_authentications: list RequestAuthentication,
        REQUEST_AUTHENTICATION_TYPE =
            "type.googleapis.com/halyard.config.v1.RequestAuthentication",
        Naming::Field(|p| &p.name);
}

#[cfg(test)]
mod tests;
