//! What operators see of the ADS server: a snapshot of every connected stream (for a
//! `/debug/connections` page) and Prometheus metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;

/// Which ADS method a stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// `StreamAggregatedResources`: state of the world.
    Sotw,
    /// `DeltaAggregatedResources`: incremental.
    Delta,
}

/// A rejected update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NackRecord {
    /// The version (SotW) or system version (delta) that was rejected.
    pub version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// The client's `error_detail.message`.
    pub message: String,
    /// When it arrived.
    #[serde(serialize_with = "unix_ms")]
    pub at: SystemTime,
}

/// Per resource type state of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeSnapshot {
    /// Subscribed to every resource of the type.
    pub wildcard: bool,
    /// Names subscribed to explicitly.
    pub names: Vec<String>,
    /// Version (SotW) or system version (delta) of the last response sent.
    pub last_sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub last_sent_nonce: Option<String>,
    /// The last version the client ACKed.
    pub acked_version: Option<String>,
    /// The last NACK, kept after later ACKs.
    pub last_nack: Option<NackRecord>,
    /// Responses sent on this stream.
    pub responses_sent: u64,
    /// Resources sent on this stream, counted one by one.
    pub resources_sent: u64,
    /// Resources the client holds as far as the server knows.
    pub resources: usize,
}

/// One connected stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionSnapshot {
    /// Unique per server.
    pub id: u64,
    /// The node id of the first request.
    pub node_id: String,
    /// The peer's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// State of the world or delta.
    pub kind: StreamKind,
    /// When the stream was accepted.
    #[serde(serialize_with = "unix_ms")]
    pub connected_since: SystemTime,
    /// Per type URL.
    pub types: BTreeMap<String, TypeSnapshot>,
}

/// Serializes a time as milliseconds since the Unix epoch.
pub(crate) fn unix_ms<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    s.serialize_u64(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Serializes an optional time as milliseconds since the Unix epoch, or null.
pub(crate) fn opt_unix_ms<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => unix_ms(t, s),
        None => s.serialize_none(),
    }
}

/// Prometheus metrics of the ADS server.
#[derive(Clone, Debug)]
pub struct AdsMetrics {
    /// `halyard_xds_connected_proxies`
    pub connected: IntGauge,
    /// `halyard_xds_pushes_total{type}`
    pub pushes: IntCounterVec,
    /// `halyard_xds_push_duration_seconds`
    pub push_duration: Histogram,
    /// `halyard_xds_nacks_total{type}`
    pub nacks: IntCounterVec,
}

impl AdsMetrics {
    /// Metrics not (yet) registered anywhere.
    pub fn new() -> Self {
        // The names, labels and buckets are constants: construction cannot fail.
        let connected = IntGauge::new(
            "halyard_xds_connected_proxies",
            "ADS streams currently open (one per connected proxy and stream)",
        );
        let pushes = IntCounterVec::new(
            Opts::new(
                "halyard_xds_pushes_total",
                "ADS responses sent, by resource type",
            ),
            &["type"],
        );
        let push_duration = Histogram::with_opts(
            HistogramOpts::new(
                "halyard_xds_push_duration_seconds",
                "From a configuration change (or the request that asked) to the proxy's ACK of \
                 the version it produced",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        );
        let nacks = IntCounterVec::new(
            Opts::new(
                "halyard_xds_nacks_total",
                "Responses a proxy rejected, by resource type",
            ),
            &["type"],
        );
        match (connected, pushes, push_duration, nacks) {
            (Ok(connected), Ok(pushes), Ok(push_duration), Ok(nacks)) => AdsMetrics {
                connected,
                pushes,
                push_duration,
                nacks,
            },
            _ => unreachable!("constant metric definitions are valid"),
        }
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.connected.clone()))?;
        registry.register(Box::new(self.pushes.clone()))?;
        registry.register(Box::new(self.push_duration.clone()))?;
        registry.register(Box::new(self.nacks.clone()))?;
        Ok(())
    }
}

impl Default for AdsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The short label of a type URL: the message name after the last dot. Only served types get
/// this far, so clients cannot create label values at will.
pub(crate) fn type_label(type_url: &str) -> &str {
    type_url.rsplit(['.', '/']).next().unwrap_or("other")
}

/// The connected streams of one server.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    next_id: AtomicU64,
    streams: Mutex<BTreeMap<u64, ConnectionSnapshot>>,
}

impl Connections {
    pub(crate) fn snapshot(&self) -> Vec<ConnectionSnapshot> {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.values().cloned().collect()
    }
}

/// A stream's entry in [`Connections`]; removed (and the gauge lowered) on drop.
pub(crate) struct ConnectionHandle {
    id: u64,
    connections: Arc<Connections>,
    gauge: IntGauge,
}

impl ConnectionHandle {
    pub(crate) fn open(
        connections: &Arc<Connections>,
        metrics: &AdsMetrics,
        node_id: &str,
        peer: Option<SocketAddr>,
        kind: StreamKind,
    ) -> Self {
        let id = connections.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let snap = ConnectionSnapshot {
            id,
            node_id: node_id.to_string(),
            peer,
            kind,
            connected_since: SystemTime::now(),
            types: BTreeMap::new(),
        };
        connections
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, snap);
        metrics.connected.inc();
        ConnectionHandle {
            id,
            connections: Arc::clone(connections),
            gauge: metrics.connected.clone(),
        }
    }

    /// Updates the snapshot of `type_url`.
    pub(crate) fn update(&self, type_url: &str, f: impl FnOnce(&mut TypeSnapshot)) {
        let mut streams = self
            .connections
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = streams.get_mut(&self.id) {
            f(s.types.entry(type_url.to_string()).or_default());
        }
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        self.connections
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_connections_track_streams() {
        let registry = Registry::new();
        let m = AdsMetrics::new();
        m.register(&registry).unwrap();
        let conns = Arc::new(Connections::default());
        let h = ConnectionHandle::open(&conns, &m, "node-1", None, StreamKind::Delta);
        h.update("t", |t| t.acked_version = Some("v1".into()));
        let snap = conns.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].types["t"].acked_version.as_deref(), Some("v1"));
        assert_eq!(m.connected.get(), 1);
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json[0]["kind"], "delta");
        assert!(json[0]["connected_since"].as_u64().unwrap() > 0);
        drop(h);
        assert!(conns.snapshot().is_empty());
        assert_eq!(m.connected.get(), 0);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"halyard_xds_connected_proxies".to_string()));
        assert_eq!(
            type_label("type.googleapis.com/halyard.config.v1.Service"),
            "Service"
        );
    }
}
