//! The server side of a state-of-the-world stream (`StreamAggregatedResources`).
//!
//! Per type URL the stream keeps the subscription, the version the client has (or is being
//! sent) and the last response sent. A response is sent whenever the version of the selected
//! set differs from that version: on the first request (unless the client already holds the
//! current version, e.g. after a reconnect), on subscription changes and on source changes.
//! A request echoing the last nonce ACKs it, or NACKs it when it carries `error_detail`; a NACK
//! is recorded and the same version is not sent again. Requests with an older nonce are stale:
//! their (N)ACK is recorded for operators, the rest of the request is ignored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use tonic::{Status, Streaming};

use super::proto::envoy::config::core::v3::ControlPlane;
use super::proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use super::session::{selected, serve, Protocol, Stop, StreamCtx};
use super::types::set_version;

struct Sent {
    nonce: String,
    version: String,
    /// When the change (or request) that produced this response happened.
    started: Instant,
    acked: bool,
}

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    /// Wildcard because every request so far had no names (the legacy form).
    legacy_wildcard: bool,
    names: BTreeSet<String>,
    /// The version the client holds or is being sent.
    known_version: Option<String>,
    /// The last responses sent, newest last.
    sent: VecDeque<Sent>,
}

/// Responses remembered per type, to record (N)ACKs that cross a newer response.
const REMEMBERED: usize = 8;

struct Sotw {
    ctx: StreamCtx<DiscoveryResponse>,
    types: BTreeMap<String, TypeState>,
}

/// Serves one stream until the client leaves, breaks the protocol or the server shuts down.
pub(crate) async fn run(
    ctx: StreamCtx<DiscoveryResponse>,
    mut inbound: Streaming<DiscoveryRequest>,
    first: DiscoveryRequest,
) {
    let mut s = Sotw {
        ctx,
        types: BTreeMap::new(),
    };
    let stop = serve(&mut s, &mut inbound, first).await;
    s.ctx.finish(stop);
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn ctx(&self) -> &StreamCtx<DiscoveryResponse> {
        &self.ctx
    }

    fn subscribed(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    async fn on_request(&mut self, req: DiscoveryRequest, now: Instant) -> Result<(), Stop> {
        Sotw::on_request(self, req, now).await
    }

    async fn on_change(&mut self, type_url: &str, now: Instant) -> Result<(), Stop> {
        self.push_if_changed(type_url, now).await
    }
}

impl Sotw {
    async fn on_request(&mut self, req: DiscoveryRequest, now: Instant) -> Result<(), Stop> {
        let type_url = check_request(&self.ctx, &req)?;
        if !self.ctx.types.contains(&type_url) {
            tracing::debug!(node = %self.ctx.node_id, type_url, "request for a type not served");
            return Ok(());
        }
        let first_for_type = !self.types.contains_key(&type_url);
        let st = self.types.entry(type_url.clone()).or_default();
        if !first_for_type && !req.response_nonce.is_empty() {
            let Some(pos) = st.sent.iter().rposition(|s| s.nonce == req.response_nonce) else {
                tracing::debug!(
                    node = %self.ctx.node_id,
                    type_url,
                    nonce = req.response_nonce,
                    "unknown nonce, request ignored"
                );
                return Ok(());
            };
            let latest = pos + 1 == st.sent.len();
            let sent = &mut st.sent[pos];
            match &req.error_detail {
                Some(err) => {
                    self.ctx
                        .record_nack(&type_url, &sent.version, &sent.nonce, &err.message)
                }
                None => {
                    let started = (!sent.acked).then_some(sent.started);
                    sent.acked = true;
                    self.ctx.record_ack(&type_url, &req.version_info, started);
                }
            }
            if !latest {
                // A newer response is on its way: the (N)ACK is recorded, but the request
                // is stale and its subscription is ignored.
                tracing::debug!(
                    node = %self.ctx.node_id,
                    type_url,
                    nonce = req.response_nonce,
                    "stale nonce, request ignored"
                );
                return Ok(());
            }
        }
        let names = req.resource_names;
        if names.iter().any(|n| n == "*") {
            st.wildcard = true;
            st.legacy_wildcard = false;
            st.names = names.into_iter().filter(|n| n != "*").collect();
        } else if names.is_empty() && (first_for_type || st.legacy_wildcard) {
            st.wildcard = true;
            st.legacy_wildcard = true;
            st.names.clear();
        } else {
            st.wildcard = false;
            st.legacy_wildcard = false;
            st.names = names.into_iter().collect();
        }
        if first_for_type && !req.version_info.is_empty() {
            st.known_version = Some(req.version_info);
        }
        self.push_if_changed(&type_url, now).await
    }

    /// Sends the selected set of `type_url` when its version differs from the client's.
    async fn push_if_changed(&mut self, type_url: &str, started: Instant) -> Result<(), Stop> {
        let Some(st) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        let all = self.ctx.current(type_url);
        let chosen = selected(&all, st.wildcard, &st.names);
        let version = set_version(chosen.iter().copied());
        self.ctx
            .record_subscription(type_url, st.wildcard, &st.names, chosen.len());
        if st.known_version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let nonce = self.ctx.next_nonce();
        let resp = DiscoveryResponse {
            version_info: version.clone(),
            resources: chosen.iter().map(|r| r.to_wrapped_any()).collect(),
            canary: false,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            control_plane: self.ctx.control_plane.as_ref().map(|id| ControlPlane {
                identifier: id.clone(),
            }),
        };
        self.ctx
            .record_push(type_url, &version, &nonce, resp.resources.len());
        st.known_version = Some(version.clone());
        st.sent.push_back(Sent {
            nonce,
            version,
            started,
            acked: false,
        });
        if st.sent.len() > REMEMBERED {
            st.sent.pop_front();
        }
        self.ctx.send(resp).await
    }
}

/// The request's type URL, after the checks every request of a stream must pass.
fn check_request<R: Send + 'static>(
    ctx: &StreamCtx<R>,
    req: &DiscoveryRequest,
) -> Result<String, Stop> {
    if req.type_url.is_empty() {
        return Err(Stop::Protocol(Status::invalid_argument(
            "type_url is required on an aggregated stream",
        )));
    }
    check_node(ctx, req.node.as_ref().map(|n| n.id.as_str()))?;
    Ok(req.type_url.clone())
}

/// A later request may repeat the node but not change it.
pub(crate) fn check_node<R: Send + 'static>(
    ctx: &StreamCtx<R>,
    node_id: Option<&str>,
) -> Result<(), Stop> {
    match node_id {
        Some(id) if !id.is_empty() && id != ctx.node_id => Err(Stop::Protocol(
            Status::invalid_argument("node.id changed within the stream"),
        )),
        _ => Ok(()),
    }
}
