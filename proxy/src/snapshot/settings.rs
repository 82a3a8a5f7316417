//! The settings section: proxy-wide settings with their defaults resolved, and the local
//! workload as telemetry names it.

use std::sync::Arc;
use std::time::Duration;

use halyard_xds::{self as xds, duration_or, ProxyConfig};

use super::defaults;
use crate::telemetry::access_log::LogFields;
use crate::telemetry::peer::{PeerHeaders, WorkloadMeta};
use crate::telemetry::trace::{OtlpProtocol, TraceConfig, DEFAULT_FLUSH_INTERVAL};

/// Resolved proxy-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// First-bytes wait.
    pub detection_timeout: Duration,
    /// Request header limit in bytes.
    pub max_request_headers: usize,
    /// Idle downstream HTTP connections.
    pub downstream_idle_timeout: Duration,
    /// The access-log fields, when access logs are on.
    pub access_log: Option<LogFields>,
    /// Whether Istio's standard metrics are recorded.
    pub istio_metrics: bool,
    /// Per-listener connection cap.
    pub max_connections: usize,
    /// Whether inbound gRPC requests in flight are ended when a new policy denies them.
    pub reset_denied_streams: bool,
}

/// The local workload as telemetry names it.
#[derive(Debug)]
pub struct LocalWorkload {
    /// Metric labels.
    pub meta: WorkloadMeta,
    /// The metadata-exchange headers this proxy sends to mesh peers.
    pub headers: PeerHeaders,
    /// Resolved tracing settings (`None`: tracing off).
    pub tracing: Option<Arc<TraceConfig>>,
}

/// The settings and the local workload of `config`.
pub(super) fn build(config: &ProxyConfig) -> (Settings, LocalWorkload) {
    let unset = xds::Settings::default();
    let s = config.settings.as_ref().unwrap_or(&unset);
    (Settings::new(s), LocalWorkload::new(config, s))
}

impl Settings {
    /// The settings `s` gives, with defaults for what it leaves out.
    fn new(s: &xds::Settings) -> Self {
        Self {
            detection_timeout: duration_or(
                s.protocol_detection_timeout.as_ref(),
                defaults::DETECTION_TIMEOUT,
            ),
            max_request_headers: match s.max_request_headers_kb {
                0 => defaults::MAX_REQUEST_HEADERS,
                kb => kb as usize * 1024,
            },
            downstream_idle_timeout: duration_or(
                s.downstream_idle_timeout.as_ref(),
                defaults::DOWNSTREAM_IDLE_TIMEOUT,
            ),
            access_log: s
                .access_log
                .unwrap_or(true)
                .then(|| LogFields::from_names(&s.access_log_fields)),
            istio_metrics: s.istio_metrics.unwrap_or(true),
            max_connections: match s.max_connections {
                0 => defaults::MAX_CONNECTIONS,
                n => n as usize,
            },
            reset_denied_streams: s.reset_denied_streams.unwrap_or(true),
        }
    }
}

impl LocalWorkload {
    /// The workload of `config` (namespace `default` when unnamed), traced per `settings`.
    fn new(config: &ProxyConfig, settings: &xds::Settings) -> Self {
        let w = config.workload.clone().unwrap_or_default();
        let ns = if w.namespace.is_empty() {
            "default"
        } else {
            &w.namespace
        };
        let meta = WorkloadMeta::from_labels(&w.name, ns, &w.labels);
        let tracing = settings.tracing.as_ref().map(|t| {
            // Istio names a workload's traces after its canonical service and namespace.
            let mut resource = vec![("k8s.namespace.name".to_string(), ns.to_string())];
            if !w.name.is_empty() {
                resource.push(("k8s.workload.name".to_string(), w.name.clone()));
            }
            resource.push((
                "service.version".to_string(),
                meta.canonical_revision().to_string(),
            ));
            Arc::new(TraceConfig {
                sampling_percent: t.sampling.unwrap_or(1.0),
                endpoint: t.otlp_endpoint.clone(),
                protocol: match t.protocol() {
                    xds::tracing::Protocol::Http => OtlpProtocol::Http,
                    xds::tracing::Protocol::Grpc => OtlpProtocol::Grpc,
                },
                service_name: format!("{}.{ns}", meta.canonical_service()),
                resource,
                flush_interval: DEFAULT_FLUSH_INTERVAL,
            })
        });
        Self {
            headers: PeerHeaders::new(&meta, &w.labels, None),
            meta,
            tracing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::cfg;

    #[test]
    fn settings_take_defaults_for_what_the_config_leaves_out() {
        let secs = Duration::from_secs;
        // (settings YAML, detection, header bytes, downstream idle, access log, istio, conns,
        // reset denied streams)
        let cases = [
            (
                "version: t\n",
                defaults::DETECTION_TIMEOUT,
                defaults::MAX_REQUEST_HEADERS,
                defaults::DOWNSTREAM_IDLE_TIMEOUT,
                true,
                true,
                defaults::MAX_CONNECTIONS,
                true,
            ),
            (
                "settings: {}\n",
                defaults::DETECTION_TIMEOUT,
                defaults::MAX_REQUEST_HEADERS,
                defaults::DOWNSTREAM_IDLE_TIMEOUT,
                true,
                true,
                defaults::MAX_CONNECTIONS,
                true,
            ),
            (
                "settings: {protocolDetectionTimeout: 2s, maxRequestHeadersKb: 8, downstreamIdleTimeout: 30s, accessLog: false, istioMetrics: false, maxConnections: 7, resetDeniedStreams: false}\n",
                secs(2),
                8 * 1024,
                secs(30),
                false,
                false,
                7,
                false,
            ),
            (
                "settings: {accessLog: true, accessLogFields: [authority]}\n",
                defaults::DETECTION_TIMEOUT,
                defaults::MAX_REQUEST_HEADERS,
                defaults::DOWNSTREAM_IDLE_TIMEOUT,
                true,
                true,
                defaults::MAX_CONNECTIONS,
                true,
            ),
        ];
        for (yaml, detection, headers, idle, log, istio, conns, reset) in cases {
            let (s, _) = build(&cfg(yaml));
            assert_eq!(s.detection_timeout, detection, "{yaml}");
            assert_eq!(s.max_request_headers, headers, "{yaml}");
            assert_eq!(s.downstream_idle_timeout, idle, "{yaml}");
            assert_eq!(s.access_log.is_some(), log, "{yaml}");
            assert_eq!(s.istio_metrics, istio, "{yaml}");
            assert_eq!(s.max_connections, conns, "{yaml}");
            assert_eq!(s.reset_denied_streams, reset, "{yaml}");
        }
    }

    #[test]
    fn tracing_names_the_workload_by_its_canonical_service_and_namespace() {
        let tracing =
            "settings:\n  tracing: {otlpEndpoint: 'http://127.0.0.1:4318', protocol: HTTP}\n";
        // (workload YAML, service name, whether k8s.workload.name is set)
        let cases = [
            ("version: t\n", "unknown.default", false),
            ("workload: {name: w, namespace: ns}\n", "w.ns", true),
            (
                "workload: {name: w-1, labels: {app: shop}}\n",
                "shop.default",
                true,
            ),
        ];
        for (workload, service, named) in cases {
            let (_, local) = build(&cfg(&format!("{workload}{tracing}")));
            let t = local.tracing.expect("tracing on");
            assert_eq!(t.service_name, service, "{workload}");
            assert_eq!(t.protocol, OtlpProtocol::Http);
            assert_eq!(t.sampling_percent, 1.0);
            let has_name = t.resource.iter().any(|(k, _)| k == "k8s.workload.name");
            assert_eq!(has_name, named, "{workload}");
        }
        assert!(build(&cfg("version: t\n")).1.tracing.is_none());
    }
}
