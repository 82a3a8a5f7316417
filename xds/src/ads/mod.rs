//! The xDS transport: Envoy's aggregated discovery service (ADS) over gRPC, state of the world
//! (`StreamAggregatedResources`) and incremental (`DeltaAggregatedResources`).
//!
//! * [`AdsServer`] serves the resources of a [`ResourceSource`] (e.g. a [`MemorySource`]) to
//!   proxies: per stream it tracks the node, its subscriptions, what was sent and (N)ACKed, and
//!   pushes only what changed.
//! * [`AdsClient`] keeps a proxy's resource state in sync: it validates each update through an
//!   applier, ACKs or NACKs it, keeps the last good state across disconnects and reconnects
//!   with jittered exponential backoff.
//!
//! Resources travel as `google.protobuf.Any` of Halyard's types (see [`types`]); in state-of-the-
//! world responses each is wrapped in an `envoy.service.discovery.v3.Resource` so that it
//! carries its name and version, as Envoy accepts.

pub mod proto;
pub mod types;

mod client;
mod delta;
mod server;
mod session;
mod sotw;
mod source;
mod stats;

pub use client::{
    AdsClient, ClientConfig, ClientStatus, ClientTypeStatus, Mode, NackRecord as ClientNack,
};
pub use proto::envoy::config::core::v3::Node;
pub use server::{AdsServer, Authorizer, ServerConfig};
pub use source::{MemorySource, ResourceMap, ResourceSource};
pub use stats::{AdsMetrics, ConnectionSnapshot, NackRecord, StreamKind, TypeSnapshot};
pub use types::{
    pack, unpack, Any, Resource, State, UnpackError, XdsResource, AUTHORIZATION_POLICY_TYPE,
    MESH_SETTINGS_NAME, MESH_SETTINGS_TYPE, REQUEST_AUTHENTICATION_TYPE, SERVICE_TYPE,
    VIRTUAL_HOST_TYPE, WORKLOAD_TYPE,
};
