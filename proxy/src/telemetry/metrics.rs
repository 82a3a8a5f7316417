//! The proxy's Prometheus metrics. Request-path counters are resolved once per label set and
//! cached, so recording is an atomic add.

use std::sync::OnceLock;

use halyard_filters::metrics::FilterMetrics;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::ctx::ListenerKind;

/// Counters of one listener, label values pre-resolved.
pub struct ListenerMetrics {
    /// `halyard_connections_active{listener}`.
    pub connections_active: IntGauge,
    /// `halyard_connections_total{listener}`.
    pub connections_total: IntCounter,
    requests: IntCounterVec,
    listener: &'static str,
    by_code: Box<[OnceLock<IntCounter>]>,
}

impl ListenerMetrics {
    /// Counts one finished request with its status code.
    pub fn request(&self, code: u16) {
        let slot = self.by_code.get(code as usize).unwrap_or(&self.by_code[0]);
        slot.get_or_init(|| {
            let label = if (100..600).contains(&code) {
                code.to_string()
            } else {
                "other".to_string()
            };
            self.requests.with_label_values(&[self.listener, &label])
        })
        .inc();
    }
}

/// All metrics of the process.
pub struct Metrics {
    /// The registry served at `/stats/prometheus`.
    pub registry: Registry,
    /// Outbound listener.
    pub outbound: ListenerMetrics,
    /// Inbound listener.
    pub inbound: ListenerMetrics,
    /// `halyard_config_reloads_total{result}`.
    pub reloads: IntCounterVec,
    /// `halyard_access_log_dropped_total`.
    pub access_log_dropped: IntCounter,
    /// `halyard_upstream_connect_failures_total`.
    pub connect_failures: IntCounter,
    /// `halyard_connections_rejected_total` (connection cap reached).
    pub connections_rejected: IntCounter,
    /// `halyard_connections_revoked_total{reason}`: open inbound connections closed because
    /// the policy now denies them (`policy`) or the peer's certificate expired
    /// (`certificate_expired`).
    pub connections_revoked: IntCounterVec,
    /// `halyard_streams_revoked_total{reason}`: inbound requests in flight (gRPC calls)
    /// ended for the same reasons.
    pub streams_revoked: IntCounterVec,
    /// `halyard_open_connections_recheck_seconds`: how long deciding every open connection
    /// and stream again took, the last time a new configuration was applied.
    pub recheck_seconds: Gauge,
    /// `halyard_cert_expiry_timestamp_seconds`: when the workload certificate expires.
    pub cert_expiry: Gauge,
    /// `halyard_cert_renewals_total{result}`.
    pub cert_renewals: IntCounterVec,
    /// `halyard_tls_failures_total{listener,reason}`: mutual TLS refused or failed, inbound
    /// (peer refused) or outbound (upstream sidecar refused, e.g. wrong identity).
    pub tls_failures: IntCounterVec,
    /// `halyard_inbound_connections_total{security}`: accepted inbound connections by
    /// `mutual_tls`, `plaintext` or `passthrough` (TLS handed to the app untouched).
    pub inbound_security: IntCounterVec,
    /// The filters' counters (authorization, JWT authentication, faults).
    pub filters: FilterMetrics,
    /// Traffic-management events per cluster.
    pub traffic: TrafficMetrics,
    /// Control-plane connection and configuration state.
    pub health: HealthMetrics,
    /// Istio's standard request and TCP metrics.
    pub istio: super::istio::IstioMetrics,
    /// Span export counters.
    pub trace: std::sync::Arc<super::trace::TraceMetrics>,
}

/// Gauges of the proxy's own state, refreshed when metrics are scraped.
pub struct HealthMetrics {
    xds_connected: IntGauge,
    xds_resources: IntGaugeVec,
    config_info: IntGaugeVec,
    config_applied: Gauge,
}

impl HealthMetrics {
    fn new(registry: &Registry) -> Result<Self, MetricsError> {
        let xds_connected = IntGauge::new(
            "halyard_xds_connected",
            "1 while a stream to the control server is open (0 without one, or with a config file).",
        )?;
        let xds_resources = IntGaugeVec::new(
            Opts::new(
                "halyard_xds_resources",
                "Resources held from the control server, by type.",
            ),
            &["type"],
        )?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "halyard_config_info",
                "The configuration version in force (value 1).",
            ),
            &["version"],
        )?;
        let config_applied = Gauge::new(
            "halyard_config_applied_timestamp_seconds",
            "When the configuration in force was applied (Unix seconds).",
        )?;
        registry.register(Box::new(xds_connected.clone()))?;
        registry.register(Box::new(xds_resources.clone()))?;
        registry.register(Box::new(config_info.clone()))?;
        registry.register(Box::new(config_applied.clone()))?;
        // CPU, memory, file descriptors and start time as `process_*`, read from /proc.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            xds_connected,
            xds_resources,
            config_info,
            config_applied,
        })
    }

    /// Sets the gauges from the current xDS status and configuration.
    pub fn refresh(
        &self,
        xds: Option<&halyard_xds::ads::ClientStatus>,
        version: &str,
        applied: std::time::SystemTime,
    ) {
        self.xds_connected
            .set(i64::from(xds.is_some_and(|s| s.connected)));
        self.xds_resources.reset();
        for (type_url, t) in xds.map(|s| &s.types).into_iter().flatten() {
            let short = type_url.rsplit(['/', '.']).next().unwrap_or(type_url);
            self.xds_resources
                .with_label_values(&[short])
                .set(t.resources as i64);
        }
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
        let secs = applied
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_applied.set(secs);
    }
}

/// Counters of retries, circuit breakers, outlier detection and mirrors.
pub struct TrafficMetrics {
    /// `halyard_upstream_rq_retry_total{cluster}`: retries sent.
    pub retries: IntCounterVec,
    /// `halyard_upstream_rq_retry_overflow_total{cluster}`: retries refused by the budget.
    pub retry_overflow: IntCounterVec,
    /// `halyard_upstream_rq_pending_overflow_total{cluster}`: requests refused by a circuit
    /// breaker (503, flag UO).
    pub overflow: IntCounterVec,
    /// `halyard_outlier_ejections_total{cluster}`: endpoints ejected.
    pub ejections: IntCounterVec,
    /// `halyard_mirror_requests_total{result}`: mirrored requests (sent, failed, skipped).
    pub mirrors: IntCounterVec,
}

impl TrafficMetrics {
    fn new(registry: &Registry) -> Result<Self, MetricsError> {
        let vec = |name: &str, help: &str, label: &str| -> Result<IntCounterVec, MetricsError> {
            let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        Ok(Self {
            retries: vec("halyard_upstream_rq_retry_total", "Retries sent, by cluster.", "cluster")?,
            retry_overflow: vec(
                "halyard_upstream_rq_retry_overflow_total",
                "Retries not sent because the retry budget or maxRetries was exhausted, by cluster.",
                "cluster",
            )?,
            overflow: vec(
                "halyard_upstream_rq_pending_overflow_total",
                "Requests refused by a connection-pool circuit breaker (503 UO), by cluster.",
                "cluster",
            )?,
            ejections: vec(
                "halyard_outlier_ejections_total",
                "Endpoints ejected by outlier detection, by cluster.",
                "cluster",
            )?,
            mirrors: vec(
                "halyard_mirror_requests_total",
                "Mirrored requests by result (sent, failed, skipped).",
                "result",
            )?,
        })
    }
}

/// Registration failed (a programming error: duplicate names).
pub type MetricsError = prometheus::Error;

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("halyard_build_info", "Build information."),
            &["version"],
        )?;
        registry.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let active = IntGaugeVec::new(
            Opts::new(
                "halyard_connections_active",
                "Downstream connections open now.",
            ),
            &["listener"],
        )?;
        let total = IntCounterVec::new(
            Opts::new(
                "halyard_connections_total",
                "Downstream connections accepted.",
            ),
            &["listener"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "halyard_requests_total",
                "HTTP requests completed, by status code.",
            ),
            &["listener", "code"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "halyard_config_reloads_total",
                "Configuration reloads by result.",
            ),
            &["result"],
        )?;
        let access_log_dropped = IntCounter::new(
            "halyard_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind.",
        )?;
        let connect_failures = IntCounter::new(
            "halyard_upstream_connect_failures_total",
            "Failed attempts to connect to an upstream endpoint.",
        )?;
        let connections_rejected = IntCounter::new(
            "halyard_connections_rejected_total",
            "Downstream connections closed at once because the listener was at its limit.",
        )?;
        let connections_revoked = IntCounterVec::new(
            Opts::new(
                "halyard_connections_revoked_total",
                "Open inbound connections closed because the policy now denies them or the peer's certificate expired.",
            ),
            &["reason"],
        )?;
        let streams_revoked = IntCounterVec::new(
            Opts::new(
                "halyard_streams_revoked_total",
                "Inbound requests in flight (gRPC calls) ended because the policy now denies them or the peer's certificate expired.",
            ),
            &["reason"],
        )?;
        let recheck_seconds = Gauge::new(
            "halyard_open_connections_recheck_seconds",
            "Time the last re-check of open connections and streams against a new configuration took.",
        )?;
        let cert_expiry = Gauge::new(
            "halyard_cert_expiry_timestamp_seconds",
            "Expiry of the workload certificate in service (Unix seconds).",
        )?;
        let cert_renewals = IntCounterVec::new(
            Opts::new(
                "halyard_cert_renewals_total",
                "Workload certificate requests to the CA, by result.",
            ),
            &["result"],
        )?;
        let tls_failures = IntCounterVec::new(
            Opts::new(
                "halyard_tls_failures_total",
                "Mutual TLS connections refused or failed, by listener and reason.",
            ),
            &["listener", "reason"],
        )?;
        let inbound_security = IntCounterVec::new(
            Opts::new(
                "halyard_inbound_connections_total",
                "Inbound connections served, by transport security.",
            ),
            &["security"],
        )?;
        let filters = FilterMetrics::register(&registry)?;
        registry.register(Box::new(tls_failures.clone()))?;
        registry.register(Box::new(inbound_security.clone()))?;
        registry.register(Box::new(cert_expiry.clone()))?;
        registry.register(Box::new(cert_renewals.clone()))?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        registry.register(Box::new(connect_failures.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(connections_revoked.clone()))?;
        registry.register(Box::new(streams_revoked.clone()))?;
        registry.register(Box::new(recheck_seconds.clone()))?;
        let listener = |kind: ListenerKind| ListenerMetrics {
            connections_active: active.with_label_values(&[kind.as_str()]),
            connections_total: total.with_label_values(&[kind.as_str()]),
            requests: requests.clone(),
            listener: kind.as_str(),
            by_code: (0..600).map(|_| OnceLock::new()).collect(),
        };
        let traffic = TrafficMetrics::new(&registry)?;
        let health = HealthMetrics::new(&registry)?;
        let istio =
            super::istio::IstioMetrics::new(&registry, super::istio::DEFAULT_MAX_LABEL_SETS)?;
        let trace = std::sync::Arc::new(super::trace::TraceMetrics::new(&registry)?);
        Ok(Self {
            trace,
            istio,
            traffic,
            health,
            outbound: listener(ListenerKind::Outbound),
            inbound: listener(ListenerKind::Inbound),
            registry,
            reloads,
            access_log_dropped,
            connect_failures,
            connections_rejected,
            connections_revoked,
            streams_revoked,
            recheck_seconds,
            cert_expiry,
            cert_renewals,
            tls_failures,
            inbound_security,
            filters,
        })
    }

    /// The metrics of a listener.
    pub fn listener(&self, kind: ListenerKind) -> &ListenerMetrics {
        match kind {
            ListenerKind::Outbound => &self.outbound,
            ListenerKind::Inbound => &self.inbound,
        }
    }

    /// Counts a mutual TLS failure.
    pub fn tls_failure(&self, kind: ListenerKind, reason: &str) {
        self.tls_failures
            .with_label_values(&[kind.as_str(), reason])
            .inc();
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
