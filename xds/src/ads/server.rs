//! The ADS server: accepts state-of-the-world and delta streams, checks the node and the
//! authorization hook on the first request, and runs one task per stream.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};

use super::grpc::AdsService;
use super::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use super::registry::ProxyResources;
use super::session::StreamCtx;
use super::source::ResourceSource;
use super::stats::{AdsMetrics, ConnectionHandle, ConnectionSnapshot, Connections, StreamKind};
use super::{delta, sotw};

/// Decides whether a node may open a stream: called with the node id of the first request and
/// the request's extensions (where the transport put the client's verified identity).
pub type Authorizer = Arc<dyn Fn(&str, &tonic::Extensions) -> Result<(), Status> + Send + Sync>;

/// A stream's context and the receiving end of its response queue.
type Opened<R> = (StreamCtx<R>, mpsc::Receiver<Result<R, Status>>);

/// Tunables of an [`AdsServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The type URLs served; requests for others are ignored. Default: every type of the
    /// registry ([`ProxyResources::TYPE_URLS`]).
    pub types: Vec<String>,
    /// Responses queued per stream before the stream waits for the client to read.
    pub queue_capacity: usize,
    /// How long a new stream may take to send its first request.
    pub first_request_timeout: Duration,
    /// Sent as `control_plane.identifier` in every response when set.
    pub control_plane_id: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            types: ProxyResources::TYPE_URLS
                .iter()
                .map(|t| t.to_string())
                .collect(),
            queue_capacity: 16,
            first_request_timeout: Duration::from_secs(30),
            control_plane_id: None,
        }
    }
}

/// The aggregated discovery service. Cheap to clone: clones share the source, the connected
/// streams, the metrics and the shutdown token.
#[derive(Clone)]
pub struct AdsServer {
    source: Arc<dyn ResourceSource>,
    config: Arc<ServerConfig>,
    types: Arc<BTreeSet<String>>,
    authorizer: Option<Authorizer>,
    metrics: AdsMetrics,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("config", &self.config)
            .field("connections", &self.connections.snapshot().len())
            .finish_non_exhaustive()
    }
}

impl AdsServer {
    /// A server of `source` with the default configuration.
    pub fn new(source: Arc<dyn ResourceSource>) -> Self {
        Self::with_config(source, ServerConfig::default())
    }

    /// A server of `source` with `config`.
    pub fn with_config(source: Arc<dyn ResourceSource>, config: ServerConfig) -> Self {
        let mut config = config;
        config.queue_capacity = config.queue_capacity.max(1);
        AdsServer {
            source,
            types: Arc::new(config.types.iter().cloned().collect()),
            config: Arc::new(config),
            authorizer: None,
            metrics: AdsMetrics::new(),
            connections: Arc::new(Connections::default()),
            shutdown: CancellationToken::new(),
        }
    }

    /// Sets the authorization hook, called once per stream with the node id of its first
    /// request; an error ends the stream with that status.
    pub fn with_authorizer(
        mut self,
        f: impl Fn(&str, &tonic::Extensions) -> Result<(), Status> + Send + Sync + 'static,
    ) -> Self {
        self.authorizer = Some(Arc::new(f));
        self
    }

    /// Ends every stream (and refuses new ones) when `token` is cancelled.
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Registers the server's metrics in `registry`.
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        self.metrics.register(registry)
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &AdsMetrics {
        &self.metrics
    }

    /// Ends every stream with UNAVAILABLE; new streams are refused.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The token whose cancellation ends every stream.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Every open stream, for `/debug/connections`.
    pub fn connections(&self) -> Vec<ConnectionSnapshot> {
        self.connections.snapshot()
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }

    /// Waits for the first request of a stream.
    async fn first_request<T>(&self, inbound: &mut Streaming<T>) -> Result<T, Status>
    where
        T: prost::Message + Default + 'static,
    {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {
                Err(Status::unavailable("the control server is shutting down"))
            }
            r = tokio::time::timeout(self.config.first_request_timeout, inbound.message()) => {
                match r {
                    Err(_) => Err(Status::deadline_exceeded("no request arrived in time")),
                    Ok(Ok(Some(m))) => Ok(m),
                    Ok(Ok(None)) => Err(Status::cancelled("the stream ended before a request")),
                    Ok(Err(status)) => Err(status),
                }
            }
        }
    }

    /// Checks the node id of a first request and the authorization hook; opens the stream's
    /// context.
    fn open<R: Send + 'static>(
        &self,
        node_id: Option<&str>,
        extensions: &tonic::Extensions,
        peer: Option<std::net::SocketAddr>,
        kind: StreamKind,
    ) -> Result<Opened<R>, Status> {
        let node_id = node_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Status::invalid_argument("the first request must carry node.id"))?;
        if let Some(auth) = &self.authorizer {
            auth(node_id, extensions)?;
        }
        let (tx, rx) = mpsc::channel(self.config.queue_capacity);
        let conn = ConnectionHandle::open(&self.connections, &self.metrics, node_id, peer, kind);
        tracing::info!(node = node_id, ?peer, ?kind, "ADS stream opened");
        let ctx = StreamCtx::new(
            Arc::clone(&self.source),
            node_id.to_string(),
            Arc::clone(&self.types),
            tx,
            self.shutdown.child_token(),
            self.metrics.clone(),
            conn,
            self.config.control_plane_id.clone(),
        );
        Ok((ctx, rx))
    }
}

impl AdsServer {
    /// Opens a state-of-the-world stream: its task is running when this returns.
    pub(crate) async fn sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<mpsc::Receiver<Result<DiscoveryResponse, Status>>, Status> {
        let peer = request.remote_addr();
        let (_, extensions, mut inbound) = request.into_parts();
        let first = self.first_request(&mut inbound).await?;
        let node_id = first.node.as_ref().map(|n| n.id.as_str());
        let (ctx, rx) = self.open(node_id, &extensions, peer, StreamKind::Sotw)?;
        tokio::spawn(sotw::run(ctx, inbound, first));
        Ok(rx)
    }

    /// Opens a delta stream: its task is running when this returns.
    pub(crate) async fn delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<mpsc::Receiver<Result<DeltaDiscoveryResponse, Status>>, Status> {
        let peer = request.remote_addr();
        let (_, extensions, mut inbound) = request.into_parts();
        let first = self.first_request(&mut inbound).await?;
        let node_id = first.node.as_ref().map(|n| n.id.as_str());
        let (ctx, rx) = self.open(node_id, &extensions, peer, StreamKind::Delta)?;
        tokio::spawn(delta::run(ctx, inbound, first));
        Ok(rx)
    }
}
