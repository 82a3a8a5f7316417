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
//! Resources travel as `google.protobuf.Any` of Halyard's types (the [`registry`] lists them,
//! [`types`] packs and versions them); in state-of-the-world responses each is wrapped in an
//! `envoy.service.discovery.v3.Resource` so that it carries its name and version, as Envoy
//! accepts.

pub mod proto;
pub mod registry;
pub mod types;

mod client;
mod delta;
mod grpc;
mod server;
mod session;
mod sotw;
mod source;
mod stats;

pub use client::{
    AdsClient, ClientConfig, ClientStatus, ClientTypeStatus, Mode, NackRecord as ClientNack,
};
pub use grpc::AdsService;
pub use proto::envoy::config::core::v3::Node;
pub use server::{AdsServer, Authorizer, ServerConfig};
pub use source::{MemorySource, ResourceMap, ResourceSource};
pub use stats::{AdsMetrics, ConnectionSnapshot, NackRecord, StreamKind, TypeSnapshot};
// The registry: `ProxyResources`, its `Encoder`, and each type's URL const (`WORKLOAD_TYPE`,
// ...), defined with its entry.
pub use registry::*;
pub use types::{pack, unpack, Any, Resource, State, UnpackError, XdsResource};
