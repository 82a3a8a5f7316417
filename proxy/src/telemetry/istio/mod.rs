//! Istio-compatible request and TCP metrics with bounded label sets.
//!
//! The families, label names and label values are those of Istio's stats filter
//! (`istio/proxy`, `istio_stats.cc`), so Istio's Grafana and Kiali dashboards work unchanged:
//!
//! * HTTP/gRPC: `istio_requests_total` (counter), `istio_request_duration_milliseconds`,
//!   `istio_request_bytes`, `istio_response_bytes` (histograms with Envoy's default buckets);
//! * TCP: `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//!   `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total` (counters).
//!
//! Values follow Istio where callers leave a choice:
//!
//! * `connection_security_policy` is `mutual_tls` or `none` for the destination reporter; the
//!   source reporter (client side) reports `unknown`, as Istio's does;
//! * `response_code` is `0` when there was no response; codes outside `100..=599` are also
//!   reported as `0` (a peer must not be able to create label values at will);
//! * `grpc_response_status` is empty for HTTP, and for gRPC without a status;
//! * `response_flags` is `-` when none; `request_protocol` is `http`, `grpc` or, for TCP, `tcp`;
//! * empty principals and service names become `unknown`, an empty canonical revision `latest`.
//!
//! Unlike Envoy, which records whole milliseconds, durations are recorded with sub-millisecond
//! precision (the buckets are the same).
//!
//! Every label set a family holds costs memory for as long as the process lives, so a family
//! stops creating label sets at `max_label_sets`; what would have needed a new one is counted in
//! `halyard_metrics_label_sets_dropped_total{kind="http"|"tcp"}` instead. The four HTTP families
//! always share label sets, as do the four TCP families, so the bound holds for each family.
//!
//! Recording is lock-free after a thread's first sight of a label set: each thread keeps a
//! bounded map, keyed by the workloads' ids and the few texts that are not ids, in front of a
//! shared map (behind a mutex, keyed by the label values) that owns the bound. The HTTP
//! families are stored per thread and summed at scrape time (see `shards`), so recording a
//! request takes no atomic read-modify-write either; the TCP families count bytes as they
//! move, from whichever thread moves them, so they are atomic counters.

mod cache;
mod labels;
mod shards;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use self::cache::{LabelSets, Local, Lookup};
use self::labels::Common;
pub use self::labels::{
    service_name_namespace, Reporter, RequestLabels, TcpLabels, HTTP_LABELS, TCP_LABELS,
};
use self::shards::{HttpCollector, HttpSet};

/// Label sets a family holds at most, unless told otherwise.
pub const DEFAULT_MAX_LABEL_SETS: usize = 10_000;

/// Envoy's default histogram buckets (`HistogramStatisticsImpl::supportedBuckets`), which
/// Istio's histograms use: milliseconds for durations, bytes for sizes.
pub const ENVOY_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// One TCP label set's handles.
struct TcpHandles {
    sent: IntCounter,
    received: IntCounter,
    opened: IntCounter,
    closed: IntCounter,
}

/// Tells instances apart in the per-thread caches.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Istio's standard metrics, registered in one registry.
pub struct IstioMetrics {
    id: u64,
    tcp_sent: IntCounterVec,
    tcp_received: IntCounterVec,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    http_sets: Arc<LabelSets<HttpSet>>,
    tcp_sets: LabelSets<TcpHandles>,
    http_dropped: IntCounter,
    tcp_dropped: IntCounter,
}

impl std::fmt::Debug for IstioMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioMetrics")
            .field("http_label_sets", &self.http_sets.len())
            .field("tcp_label_sets", &self.tcp_sets.len())
            .finish_non_exhaustive()
    }
}

impl IstioMetrics {
    /// Creates the families and registers them (and the drop counter) in `registry`;
    /// each family holds at most `max_label_sets` label sets.
    pub fn new(registry: &Registry, max_label_sets: usize) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let http_sets = Arc::new(LabelSets::new(max_label_sets));
        registry.register(Box::new(HttpCollector::new(http_sets.clone())?))?;
        let dropped = counter(
            "halyard_metrics_label_sets_dropped_total",
            "Requests (kind=http) and connections (kind=tcp) not recorded in Istio metrics \
             because their label set would exceed the families' label set limit.",
            &["kind"],
        )?;
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tcp_sent: counter(
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the downstream during TCP connections, response direction \
                 (Istio standard metric).",
                &TCP_LABELS,
            )?,
            tcp_received: counter(
                "istio_tcp_received_bytes_total",
                "Bytes received from the downstream during TCP connections, request direction \
                 (Istio standard metric).",
                &TCP_LABELS,
            )?,
            tcp_opened: counter(
                "istio_tcp_connections_opened_total",
                "TCP connections opened (Istio standard metric).",
                &TCP_LABELS,
            )?,
            tcp_closed: counter(
                "istio_tcp_connections_closed_total",
                "TCP connections closed (Istio standard metric).",
                &TCP_LABELS,
            )?,
            http_sets,
            tcp_sets: LabelSets::new(max_label_sets),
            http_dropped: dropped.get_metric_with_label_values(&["http"])?,
            tcp_dropped: dropped.get_metric_with_label_values(&["tcp"])?,
        })
    }

    /// Records one finished request (counter + three histograms).
    pub fn record_request(
        &self,
        l: &RequestLabels<'_>,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let millis = duration.as_secs_f64() * 1000.0;
        let recorded = cache::with_handles(
            Lookup {
                sets: &self.http_sets,
                slots: Local::http,
                view: |set| set.shard(),
            },
            l.thread_key(self.id),
            |key| l.encode(&l.common(), key),
            || Some(Self::http_set(l)),
            |shard| match shard {
                Some(shard) => {
                    shard.record(millis, request_bytes, response_bytes);
                    true
                }
                None => false,
            },
        );
        if !recorded {
            self.http_dropped.inc();
        }
    }

    /// Resolves a TCP connection's handles once and counts it opened.
    pub fn tcp_open(&self, l: &TcpLabels<'_>) -> TcpConn {
        let handles = cache::with_handles(
            Lookup {
                sets: &self.tcp_sets,
                slots: Local::tcp,
                view: Arc::clone,
            },
            l.thread_key(self.id),
            |key| l.common().encode(key),
            || self.tcp_handles(&l.common()),
            |h| h.cloned(),
        );
        match &handles {
            Some(h) => h.opened.inc(),
            None => self.tcp_dropped.inc(),
        }
        TcpConn { handles }
    }

    fn http_set(l: &RequestLabels<'_>) -> HttpSet {
        let common = l.common();
        let grpc_status = l.grpc_status().map(|s| s.to_string()).unwrap_or_default();
        let protocol = if l.grpc { "grpc" } else { "http" };
        let tail = [
            protocol.to_string(),
            l.code().to_string(),
            grpc_status,
            common.response_flags.to_string(),
            common.security.to_string(),
        ];
        let mut values = common.values.iter().map(|v| v.to_string()).chain(tail);
        HttpSet::new(std::array::from_fn(|_| values.next().unwrap_or_default()))
    }

    fn tcp_handles(&self, common: &Common<'_>) -> Option<TcpHandles> {
        let mut values = [""; 21];
        values[..18].copy_from_slice(&common.values);
        values[18..].copy_from_slice(&["tcp", common.response_flags, common.security]);
        Some(TcpHandles {
            sent: self.tcp_sent.get_metric_with_label_values(&values).ok()?,
            received: self
                .tcp_received
                .get_metric_with_label_values(&values)
                .ok()?,
            opened: self.tcp_opened.get_metric_with_label_values(&values).ok()?,
            closed: self.tcp_closed.get_metric_with_label_values(&values).ok()?,
        })
    }
}

/// One TCP connection's counters; dropping it counts the connection closed.
///
/// "Sent" and "received" are from the reporting proxy's view of its downstream, as in Istio:
/// sent is the response direction, received the request direction.
pub struct TcpConn {
    /// None when the label set was dropped: nothing is recorded.
    handles: Option<Arc<TcpHandles>>,
}

impl std::fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConn")
            .field("recorded", &self.handles.is_some())
            .finish()
    }
}

impl TcpConn {
    /// Counts `n` bytes sent to the downstream.
    pub fn sent(&self, n: u64) {
        if let Some(h) = &self.handles {
            h.sent.inc_by(n);
        }
    }

    /// Counts `n` bytes received from the downstream.
    pub fn received(&self, n: u64) {
        if let Some(h) = &self.handles {
            h.received.inc_by(n);
        }
    }

    /// Whether this connection is recorded (false when its label set was dropped).
    pub fn is_recorded(&self) -> bool {
        self.handles.is_some()
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        if let Some(h) = &self.handles {
            h.closed.inc();
        }
    }
}
