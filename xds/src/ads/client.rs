//! The ADS client a proxy runs: keeps the full resource state per type, validates each update
//! through an applier and ACKs or NACKs it, keeps the last good state while disconnected and
//! reconnects with capped, jittered exponential backoff, resuming where it left off
//! (`initial_resource_versions` in delta mode, the last ACKed `version_info` in SotW mode).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::proto::envoy::config::core::v3::Node;
use super::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use super::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use super::proto::google::rpc::Status as RpcStatus;
use super::stats::{opt_unix_ms, unix_ms};
use super::types::{Resource, State};

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Which ADS method the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
}

/// What an [`AdsClient`] asks for and how it retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Sent on the first request of every stream; `id` names the proxy.
    pub node: Node,
    /// The resource types to subscribe to (each with a wildcard subscription).
    pub type_urls: Vec<String>,
    /// State of the world or delta.
    pub mode: Mode,
    /// The first reconnect delay; it doubles up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    /// The longest reconnect delay.
    pub max_backoff: Duration,
    /// The largest response accepted.
    pub max_message_size: usize,
}

impl ClientConfig {
    /// A configuration with 100 ms to 30 s backoff and 16 MiB responses.
    pub fn new(
        node: Node,
        type_urls: impl IntoIterator<Item = impl Into<String>>,
        mode: Mode,
    ) -> Self {
        ClientConfig {
            node,
            type_urls: type_urls.into_iter().map(Into::into).collect(),
            mode,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_message_size: 16 << 20,
        }
    }
}

/// An update the client rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NackRecord {
    /// The rejected version (SotW `version_info`, delta `system_version_info`).
    pub version: String,
    /// Why the applier (or decoding) rejected it.
    pub message: String,
    /// When.
    #[serde(serialize_with = "unix_ms")]
    pub at: SystemTime,
}

/// Per type state of the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientTypeStatus {
    /// The last version applied and ACKed.
    pub acked_version: Option<String>,
    /// The nonce of the last response received.
    pub last_nonce: Option<String>,
    /// Resources held.
    pub resources: usize,
    /// When the last ACK was sent.
    #[serde(serialize_with = "opt_unix_ms")]
    pub last_ack: Option<SystemTime>,
    /// The last NACK (kept after later ACKs).
    pub last_nack: Option<NackRecord>,
}

/// The client's connection state, for `/config_dump`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientStatus {
    /// A stream to the server is open.
    pub connected: bool,
    /// When `connected` last changed.
    #[serde(serialize_with = "opt_unix_ms")]
    pub since: Option<SystemTime>,
    /// Streams opened so far.
    pub connects: u64,
    /// Why the last stream or connection attempt ended.
    pub last_error: Option<String>,
    /// Per type URL.
    pub types: BTreeMap<String, ClientTypeStatus>,
}

/// How one stream ended.
enum SessionEnd {
    Cancelled,
    Ended {
        error: String,
        /// The stream worked for a while: the next retry starts from the shortest delay.
        healthy: bool,
    },
}

/// A stream lasting this long counts as healthy even without a response.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// Capped exponential backoff with jitter (each delay is 50–100 % of the nominal one).
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    fn delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        nominal.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// The ADS client. `connect` opens a channel to the control server (the proxy builds its own,
/// e.g. with TLS); it is called again for every reconnect.
pub struct AdsClient<C> {
    config: ClientConfig,
    connect: C,
    status: watch::Sender<ClientStatus>,
    state: State,
    /// SotW: the last ACKed `version_info` per type.
    acked: BTreeMap<String, String>,
}

impl<C, F, E> AdsClient<C>
where
    C: FnMut() -> F + Send,
    F: Future<Output = Result<Channel, E>> + Send,
    E: std::fmt::Display,
{
    /// A client that is not running yet.
    pub fn new(config: ClientConfig, connect: C) -> Self {
        AdsClient {
            config,
            connect,
            status: watch::Sender::new(ClientStatus::default()),
            state: State::new(),
            acked: BTreeMap::new(),
        }
    }

    /// The connection state, updated as it changes.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Runs until `cancel` fires and returns the last applied state. For every response the
    /// applier gets the complete candidate state (every type URL, name → resource); `Ok`
    /// commits and ACKs it, `Err(message)` NACKs with that message and keeps the previous state.
    pub async fn run<A>(mut self, mut applier: A, cancel: CancellationToken) -> State
    where
        A: FnMut(&State) -> Result<(), String> + Send,
    {
        let mut backoff = Backoff::new(self.config.initial_backoff, self.config.max_backoff);
        loop {
            let connected = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                c = (self.connect)() => c,
            };
            match connected {
                Err(e) => self.disconnected(format!("cannot connect: {e}")),
                Ok(channel) => {
                    let end = match self.config.mode {
                        Mode::Sotw => self.sotw_session(channel, &mut applier, &cancel).await,
                        Mode::Delta => self.delta_session(channel, &mut applier, &cancel).await,
                    };
                    match end {
                        SessionEnd::Cancelled => break,
                        SessionEnd::Ended { error, healthy } => {
                            if healthy {
                                backoff.reset();
                            }
                            self.disconnected(error);
                        }
                    }
                }
            }
            let delay = backoff.delay();
            tracing::debug!(?delay, "reconnecting to the control server after a delay");
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.status.send_modify(|s| {
            if s.connected {
                s.connected = false;
                s.since = Some(SystemTime::now());
            }
        });
        self.state
    }

    fn connected(&self) {
        tracing::info!(node = %self.config.node.id, mode = ?self.config.mode, "connected to the control server");
        self.status.send_modify(|s| {
            s.connected = true;
            s.since = Some(SystemTime::now());
            s.connects += 1;
        });
    }

    fn disconnected(&self, error: String) {
        tracing::warn!(node = %self.config.node.id, error, "xDS stream ended; keeping the last configuration");
        self.status.send_modify(|s| {
            if s.connected || s.since.is_none() {
                s.since = Some(SystemTime::now());
            }
            s.connected = false;
            s.last_error = Some(error);
        });
    }

    /// Offers `resources` as the new set of `type_url` to the applier; keeps it on `Ok`. A set
    /// equal to the one held is accepted without asking the applier again.
    fn try_apply<A>(
        &mut self,
        applier: &mut A,
        type_url: &str,
        resources: BTreeMap<String, Resource>,
    ) -> Result<(), String>
    where
        A: FnMut(&State) -> Result<(), String>,
    {
        if self.state.get(type_url) == Some(&resources) {
            // Nothing changed (e.g. an empty delta answering a resumed stream): no new snapshot.
            return Ok(());
        }
        let old = self.state.insert(type_url.to_string(), resources);
        match applier(&self.state) {
            Ok(()) => Ok(()),
            Err(message) => {
                match old {
                    Some(old) => self.state.insert(type_url.to_string(), old),
                    None => self.state.remove(type_url),
                };
                Err(message)
            }
        }
    }

    /// Records the outcome of a response in the status.
    fn record(&self, type_url: &str, version: &str, nonce: &str, outcome: &Result<(), String>) {
        let held = self.state.get(type_url).map_or(0, BTreeMap::len);
        if let Err(message) = outcome {
            tracing::warn!(type_url, version, message = %message, "rejected configuration (NACK)");
        }
        self.status.send_modify(|s| {
            let t = s.types.entry(type_url.to_string()).or_default();
            t.last_nonce = Some(nonce.to_string());
            t.resources = held;
            match outcome {
                Ok(()) => {
                    t.acked_version = Some(version.to_string());
                    t.last_ack = Some(SystemTime::now());
                }
                Err(message) => {
                    t.last_nack = Some(NackRecord {
                        version: version.to_string(),
                        message: message.clone(),
                        at: SystemTime::now(),
                    })
                }
            }
        });
    }

    fn subscribed(&self, type_url: &str) -> Result<(), String> {
        if self.config.type_urls.iter().any(|t| t == type_url) {
            Ok(())
        } else {
            Err(format!("not subscribed to {type_url:?}"))
        }
    }

    async fn sotw_session<A>(
        &mut self,
        channel: Channel,
        applier: &mut A,
        cancel: &CancellationToken,
    ) -> SessionEnd
    where
        A: FnMut(&State) -> Result<(), String> + Send,
    {
        let (tx, rx) = mpsc::channel(self.config.type_urls.len() + 4);
        for (i, t) in self.config.type_urls.iter().enumerate() {
            let _ = tx.try_send(DiscoveryRequest {
                version_info: self.acked.get(t).cloned().unwrap_or_default(),
                node: (i == 0).then(|| self.config.node.clone()),
                resource_names: Vec::new(),
                type_url: t.clone(),
                response_nonce: String::new(),
                error_detail: None,
            });
        }
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_size);
        let opened = Instant::now();
        let call = tokio::select! {
            biased;
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            call = grpc.stream_aggregated_resources(ReceiverStream::new(rx)) => call,
        };
        let inbound = match call {
            Ok(r) => r.into_inner(),
            Err(status) => return ended(format!("stream refused: {status}"), false),
        };
        self.pump(inbound, &tx, cancel, opened, |me, resp| {
            me.on_sotw_response(resp, applier)
        })
        .await
    }

    fn on_sotw_response<A>(&mut self, resp: DiscoveryResponse, applier: &mut A) -> DiscoveryRequest
    where
        A: FnMut(&State) -> Result<(), String>,
    {
        let type_url = resp.type_url;
        let node_id = self.config.node.id.clone();
        let outcome = self.subscribed(&type_url).and_then(|()| {
            let mut set = BTreeMap::new();
            for any in resp.resources {
                let r =
                    Resource::from_sotw_any(&type_url, &node_id, any).map_err(|e| e.to_string())?;
                if let Some(dup) = set.insert(r.name.clone(), r) {
                    return Err(format!("resource {:?} appears twice", dup.name));
                }
            }
            self.try_apply(applier, &type_url, set)
        });
        self.record(&type_url, &resp.version_info, &resp.nonce, &outcome);
        match outcome {
            Ok(()) => {
                self.acked
                    .insert(type_url.clone(), resp.version_info.clone());
                DiscoveryRequest {
                    version_info: resp.version_info,
                    type_url,
                    response_nonce: resp.nonce,
                    ..Default::default()
                }
            }
            Err(message) => DiscoveryRequest {
                version_info: self.acked.get(&type_url).cloned().unwrap_or_default(),
                type_url,
                response_nonce: resp.nonce,
                error_detail: Some(nack_status(message)),
                ..Default::default()
            },
        }
    }

    async fn delta_session<A>(
        &mut self,
        channel: Channel,
        applier: &mut A,
        cancel: &CancellationToken,
    ) -> SessionEnd
    where
        A: FnMut(&State) -> Result<(), String> + Send,
    {
        let (tx, rx) = mpsc::channel(self.config.type_urls.len() + 4);
        for (i, t) in self.config.type_urls.iter().enumerate() {
            let held = self.state.get(t);
            let _ = tx.try_send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.config.node.clone()),
                type_url: t.clone(),
                initial_resource_versions: held
                    .map(|m| {
                        m.values()
                            .map(|r| (r.name.clone(), r.version.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
                ..Default::default()
            });
        }
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_size);
        let opened = Instant::now();
        let call = tokio::select! {
            biased;
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            call = grpc.delta_aggregated_resources(ReceiverStream::new(rx)) => call,
        };
        let inbound = match call {
            Ok(r) => r.into_inner(),
            Err(status) => return ended(format!("stream refused: {status}"), false),
        };
        self.pump(inbound, &tx, cancel, opened, |me, resp| {
            me.on_delta_response(resp, applier)
        })
        .await
    }

    fn on_delta_response<A>(
        &mut self,
        resp: DeltaDiscoveryResponse,
        applier: &mut A,
    ) -> DeltaDiscoveryRequest
    where
        A: FnMut(&State) -> Result<(), String>,
    {
        let type_url = resp.type_url;
        let outcome = self.subscribed(&type_url).and_then(|()| {
            let mut set = self.state.get(&type_url).cloned().unwrap_or_default();
            let mut seen = std::collections::BTreeSet::new();
            for r in resp.resources {
                let r = Resource::from_wire(&type_url, r).map_err(|e| e.to_string())?;
                if !seen.insert(r.name.clone()) {
                    return Err(format!("resource {:?} appears twice", r.name));
                }
                set.insert(r.name.clone(), r);
            }
            for name in &resp.removed_resources {
                set.remove(name);
            }
            self.try_apply(applier, &type_url, set)
        });
        self.record(&type_url, &resp.system_version_info, &resp.nonce, &outcome);
        DeltaDiscoveryRequest {
            type_url,
            response_nonce: resp.nonce,
            error_detail: outcome.err().map(nack_status),
            ..Default::default()
        }
    }
}

impl<C, F, E> AdsClient<C>
where
    C: FnMut() -> F + Send,
    F: Future<Output = Result<Channel, E>> + Send,
    E: std::fmt::Display,
{
    /// Receives responses until the stream ends, answering each with the request `handle`
    /// makes (ACK or NACK). A stream that delivered something, or lived a while, was healthy.
    async fn pump<Req, Resp>(
        &mut self,
        mut inbound: tonic::Streaming<Resp>,
        tx: &mpsc::Sender<Req>,
        cancel: &CancellationToken,
        opened: Instant,
        mut handle: impl FnMut(&mut Self, Resp) -> Req,
    ) -> SessionEnd
    where
        Resp: prost::Message + Default + 'static,
    {
        self.connected();
        let mut got_any = false;
        loop {
            let msg = tokio::select! {
                biased;
                _ = cancel.cancelled() => return SessionEnd::Cancelled,
                m = inbound.message() => m,
            };
            let healthy = got_any || opened.elapsed() >= HEALTHY_AFTER;
            match msg {
                Ok(Some(resp)) => {
                    got_any = true;
                    let req = handle(self, resp);
                    if tx.send(req).await.is_err() {
                        return ended("the request stream closed".into(), true);
                    }
                }
                Ok(None) => return ended("the server closed the stream".into(), healthy),
                Err(status) => return ended(format!("stream failed: {status}"), healthy),
            }
        }
    }
}

fn ended(error: String, healthy: bool) -> SessionEnd {
    SessionEnd::Ended { error, healthy }
}

fn nack_status(message: String) -> RpcStatus {
    RpcStatus {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let d0 = b.delay();
        assert!(
            d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
            "{d0:?}"
        );
        let d1 = b.delay();
        assert!(
            d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200),
            "{d1:?}"
        );
        for _ in 0..20 {
            let d = b.delay();
            assert!(d <= Duration::from_secs(30), "{d:?}");
        }
        let capped = b.delay();
        assert!(capped >= Duration::from_secs(15), "{capped:?}");
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
