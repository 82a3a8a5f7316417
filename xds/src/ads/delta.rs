//! The server side of an incremental stream (`DeltaAggregatedResources`).
//!
//! Per type URL the stream keeps the subscription and the version of every resource the client
//! holds (seeded from `initial_resource_versions` on the first request of a type, then updated
//! with every response). A response carries only resources whose version the client does not
//! have and the names of those it must drop; a resource is never resent at a version the client
//! already holds. Every response has its own nonce and is ACKed or NACKed on its own; a NACK is
//! recorded and the rejected versions are not sent again until they change. Names subscribed in
//! a later request are always sent, as the protocol requires.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use tonic::{Status, Streaming};

use super::proto::envoy::config::core::v3::ControlPlane;
use super::proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use super::session::{selected, serve, Protocol, Stop, StreamCtx};
use super::sotw::check_node;
use super::types::{set_version, Resource};

/// Responses awaiting their ACK per type; older ones are forgotten beyond this.
const MAX_IN_FLIGHT: usize = 64;

struct InFlight {
    nonce: String,
    version: String,
    started: Instant,
}

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → version the client holds (or is being sent).
    client: BTreeMap<String, String>,
    in_flight: VecDeque<InFlight>,
}

struct Delta {
    ctx: StreamCtx<DeltaDiscoveryResponse>,
    types: BTreeMap<String, TypeState>,
}

/// Serves one stream until the client leaves, breaks the protocol or the server shuts down.
pub(crate) async fn run(
    ctx: StreamCtx<DeltaDiscoveryResponse>,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    first: DeltaDiscoveryRequest,
) {
    let mut s = Delta {
        ctx,
        types: BTreeMap::new(),
    };
    let stop = serve(&mut s, &mut inbound, first).await;
    s.ctx.finish(stop);
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn ctx(&self) -> &StreamCtx<DeltaDiscoveryResponse> {
        &self.ctx
    }

    fn subscribed(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest, now: Instant) -> Result<(), Stop> {
        Delta::on_request(self, req, now).await
    }

    async fn on_change(&mut self, type_url: &str, now: Instant) -> Result<(), Stop> {
        self.push_diff(type_url, now, false).await
    }
}

impl Delta {
    async fn on_request(&mut self, req: DeltaDiscoveryRequest, now: Instant) -> Result<(), Stop> {
        if req.type_url.is_empty() {
            return Err(Stop::Protocol(Status::invalid_argument(
                "type_url is required on an aggregated stream",
            )));
        }
        check_node(&self.ctx, req.node.as_ref().map(|n| n.id.as_str()))?;
        let type_url = req.type_url;
        if !self.ctx.types.contains(&type_url) {
            tracing::debug!(node = %self.ctx.node_id, type_url, "request for a type not served");
            return Ok(());
        }
        let first_for_type = !self.types.contains_key(&type_url);
        let st = self.types.entry(type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            match st
                .in_flight
                .iter()
                .position(|f| f.nonce == req.response_nonce)
            {
                Some(pos) => {
                    // Responses are (N)ACKed in order: older ones left unanswered are moot.
                    let answered = st.in_flight.drain(..=pos).next_back();
                    if let Some(f) = answered {
                        match &req.error_detail {
                            Some(err) => {
                                self.ctx
                                    .record_nack(&type_url, &f.version, &f.nonce, &err.message)
                            }
                            None => self.ctx.record_ack(&type_url, &f.version, Some(f.started)),
                        }
                    }
                }
                None => tracing::debug!(
                    node = %self.ctx.node_id,
                    type_url,
                    nonce = req.response_nonce,
                    "(N)ACK of an unknown nonce"
                ),
            }
        }
        if first_for_type {
            st.client = req.initial_resource_versions.into_iter().collect();
            if req.resource_names_subscribe.is_empty() {
                st.wildcard = true;
            }
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                if !first_for_type {
                    // The client may have dropped it: it must be sent again.
                    st.client.remove(&name);
                }
                st.names.insert(name);
            }
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(&name);
                if !st.wildcard {
                    st.client.remove(&name);
                }
            }
        }
        self.push_diff(&type_url, now, first_for_type).await
    }

    /// Sends what the client lacks of `type_url` and what it must drop; with `always`, sends a
    /// response even when there is nothing (so a first request learns it is in sync).
    async fn push_diff(
        &mut self,
        type_url: &str,
        started: Instant,
        always: bool,
    ) -> Result<(), Stop> {
        let Some(st) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let all = self.ctx.current(type_url);
        let chosen = selected(&all, st.wildcard, &st.names);
        let added: Vec<&Resource> = chosen
            .iter()
            .copied()
            .filter(|r| st.client.get(&r.name) != Some(&r.version))
            .collect();
        let wanted: BTreeSet<&str> = chosen.iter().map(|r| r.name.as_str()).collect();
        let removed: Vec<String> = st
            .client
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        self.ctx
            .record_subscription(type_url, st.wildcard, &st.names, chosen.len());
        if added.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        let version = set_version(chosen.iter().copied());
        let nonce = self.ctx.next_nonce();
        for r in &added {
            st.client.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            st.client.remove(n);
        }
        let resp = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources: added.iter().map(|r| r.to_wire()).collect(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            removed_resources: removed,
            control_plane: self.ctx.control_plane.as_ref().map(|id| ControlPlane {
                identifier: id.clone(),
            }),
        };
        self.ctx
            .record_push(type_url, &version, &nonce, resp.resources.len());
        st.in_flight.push_back(InFlight {
            nonce,
            version,
            started,
        });
        if st.in_flight.len() > MAX_IN_FLIGHT {
            st.in_flight.pop_front();
        }
        self.ctx.send(resp).await
    }
}
