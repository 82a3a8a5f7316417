//! What the state-of-the-world and delta stream loops of the server share: the stream's
//! context, the bounded outbound queue and how a stream ends.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::source::{ResourceMap, ResourceSource};
use super::stats::{type_label, AdsMetrics, ConnectionHandle, NackRecord, TypeSnapshot};

/// Why a stream loop stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client went away (end of its request stream, a transport error, or it dropped the
    /// response stream).
    ClientGone,
    /// The server is shutting down.
    Shutdown,
    /// The client broke the protocol; the stream ends with this status.
    Protocol(Status),
}

/// One stream's view of the server.
pub(crate) struct StreamCtx<R> {
    pub source: Arc<dyn ResourceSource>,
    pub node_id: String,
    pub types: Arc<BTreeSet<String>>,
    pub tx: mpsc::Sender<Result<R, Status>>,
    pub cancel: CancellationToken,
    pub metrics: AdsMetrics,
    pub conn: ConnectionHandle,
    pub changes: watch::Receiver<u64>,
    pub control_plane: Option<String>,
    nonce: u64,
}

impl<R: Send + 'static> StreamCtx<R> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        source: Arc<dyn ResourceSource>,
        node_id: String,
        types: Arc<BTreeSet<String>>,
        tx: mpsc::Sender<Result<R, Status>>,
        cancel: CancellationToken,
        metrics: AdsMetrics,
        conn: ConnectionHandle,
        control_plane: Option<String>,
    ) -> Self {
        let changes = source.changes();
        StreamCtx {
            source,
            node_id,
            types,
            tx,
            cancel,
            metrics,
            conn,
            changes,
            control_plane,
            nonce: 0,
        }
    }

    /// A nonce unique on this stream.
    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// The resources of `type_url` this node gets now (empty when the source has none).
    pub(crate) fn current(&self, type_url: &str) -> Arc<ResourceMap> {
        self.source
            .resources(&self.node_id, type_url)
            .unwrap_or_default()
    }

    /// Queues a response, waiting while the queue is full (the client reads slowly), unless
    /// the server shuts down or the client goes away meanwhile.
    pub(crate) async fn send(&self, msg: R) -> Result<(), Stop> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Stop::Shutdown),
            sent = self.tx.send(Ok(msg)) => sent.map_err(|_| Stop::ClientGone),
        }
    }

    /// Records a push of `resources` resources of `type_url`.
    pub(crate) fn record_push(&self, type_url: &str, version: &str, nonce: &str, resources: usize) {
        self.metrics
            .pushes
            .with_label_values(&[type_label(type_url)])
            .inc();
        self.conn.update(type_url, |t| {
            t.last_sent_version = Some(version.to_string());
            t.last_sent_nonce = Some(nonce.to_string());
            t.responses_sent += 1;
            t.resources_sent += resources as u64;
        });
    }

    /// Records an ACK of `version`; `started` is when the change that produced it happened.
    pub(crate) fn record_ack(&self, type_url: &str, version: &str, started: Option<Instant>) {
        if let Some(started) = started {
            self.metrics
                .push_duration
                .observe(started.elapsed().as_secs_f64());
        }
        self.conn.update(type_url, |t| {
            t.acked_version = Some(version.to_string());
        });
    }

    /// Records a NACK of the response `nonce` (which carried `version`).
    pub(crate) fn record_nack(&self, type_url: &str, version: &str, nonce: &str, message: &str) {
        tracing::warn!(
            node = %self.node_id,
            type_url,
            version,
            nonce,
            message,
            "proxy rejected configuration (NACK)"
        );
        self.metrics
            .nacks
            .with_label_values(&[type_label(type_url)])
            .inc();
        self.conn.update(type_url, |t| {
            t.last_nack = Some(NackRecord {
                version: version.to_string(),
                nonce: nonce.to_string(),
                message: message.to_string(),
                at: SystemTime::now(),
            });
        });
    }

    /// Updates the subscription part of the type's snapshot.
    pub(crate) fn record_subscription(
        &self,
        type_url: &str,
        wildcard: bool,
        names: &BTreeSet<String>,
        resources: usize,
    ) {
        self.conn.update(type_url, |t: &mut TypeSnapshot| {
            t.wildcard = wildcard;
            t.names = names.iter().cloned().collect();
            t.resources = resources;
        });
    }

    /// Ends the stream: tells the client why when there is something to say.
    pub(crate) fn finish(&self, stop: Stop) {
        let status = match stop {
            Stop::ClientGone => return,
            Stop::Shutdown => Status::unavailable("the control server is shutting down"),
            Stop::Protocol(status) => status,
        };
        tracing::debug!(node = %self.node_id, %status, "ending ADS stream");
        // The queue may be full; a client that reads nothing does not need the reason.
        let _ = self.tx.try_send(Err(status));
    }
}

/// The resources selected by a subscription.
pub(crate) fn selected<'a>(
    all: &'a ResourceMap,
    wildcard: bool,
    names: &'a BTreeSet<String>,
) -> Vec<&'a super::types::Resource> {
    if wildcard {
        all.values().collect()
    } else {
        names.iter().filter_map(|n| all.get(n)).collect()
    }
}

/// One ADS variant (state of the world or delta) as [`serve`] drives it.
pub(crate) trait Protocol: Send {
    /// The request message of the stream.
    type Request: prost::Message + Default + Send + 'static;
    /// The response message of the stream.
    type Response: Send + 'static;
    /// The stream's shared context.
    fn ctx(&self) -> &StreamCtx<Self::Response>;
    /// The type URLs the client subscribed to so far.
    fn subscribed(&self) -> Vec<String>;
    /// Handles one request (subscription, ACK or NACK).
    fn on_request(
        &mut self,
        req: Self::Request,
        now: std::time::Instant,
    ) -> impl std::future::Future<Output = Result<(), Stop>> + Send;
    /// Pushes what changed of `type_url` after the source changed.
    fn on_change(
        &mut self,
        type_url: &str,
        now: std::time::Instant,
    ) -> impl std::future::Future<Output = Result<(), Stop>> + Send;
}

/// Serves one stream until the client leaves, breaks the protocol or the server shuts down:
/// requests as they come, and a push of every subscribed type whenever the source changes.
pub(crate) async fn serve<P: Protocol>(
    p: &mut P,
    inbound: &mut tonic::Streaming<P::Request>,
    first: P::Request,
) -> Stop {
    if let Err(stop) = p.on_request(first, std::time::Instant::now()).await {
        return stop;
    }
    let (cancel, tx, mut changes) = {
        let ctx = p.ctx();
        (ctx.cancel.clone(), ctx.tx.clone(), ctx.changes.clone())
    };
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Stop::Shutdown,
            _ = tx.closed() => return Stop::ClientGone,
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if let Err(stop) = p.on_request(req, std::time::Instant::now()).await {
                        return stop;
                    }
                }
                Ok(None) => return Stop::ClientGone,
                Err(status) => {
                    tracing::debug!(node = %p.ctx().node_id, %status, "ADS stream broke");
                    return Stop::ClientGone;
                }
            },
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                changes.borrow_and_update();
                let now = std::time::Instant::now();
                for t in p.subscribed() {
                    if let Err(stop) = p.on_change(&t, now).await {
                        return stop;
                    }
                }
            }
        }
    }
}
