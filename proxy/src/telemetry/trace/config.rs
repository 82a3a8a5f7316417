//! Tracing configuration, its validation, and the tracer's own counters.

use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::Uri;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Flush interval when the mesh config says nothing.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Path of the OTLP/HTTP trace endpoint when the configured endpoint has none.
const DEFAULT_HTTP_PATH: &str = "/v1/traces";

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`TraceService/Export`).
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    Http,
}

/// What the mesh config says about tracing.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// Percentage (0..=100) of requests sampled when they arrive without a sampling decision.
    pub sampling_percent: f64,
    /// Collector address, `http://host:port`; for HTTP optionally with a custom path.
    pub endpoint: String,
    /// Transport to the collector.
    pub protocol: OtlpProtocol,
    /// OTel resource `service.name`, e.g. `frontend.default`.
    pub service_name: String,
    /// Extra resource attributes (`k8s.namespace.name`, `service.version`, ...).
    pub resource: Vec<(String, String)>,
    /// How long a partial batch may wait before it is exported.
    pub flush_interval: Duration,
}

/// Why a tracing configuration was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TraceError {
    /// Sampling percentage outside 0..=100 (or not a number).
    #[error("trace sampling percentage must be between 0 and 100, got {0}")]
    Sampling(f64),
    /// The endpoint is not a usable `http://host:port[/path]` URL.
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `https://` endpoints need trust roots, which the proxy does not have for collectors yet.
    #[error(
        "OTLP endpoint {0:?} uses https, which is not supported yet (no trust roots are \
         configured for collectors); use an http:// endpoint"
    )]
    HttpsUnsupported(String),
    /// `service.name` is required by OTel.
    #[error("trace service name must not be empty")]
    ServiceName,
    /// A zero flush interval would spin.
    #[error("trace flush interval must be greater than zero")]
    FlushInterval,
    /// Resource attribute keys must be non-empty.
    #[error("trace resource attribute keys must not be empty")]
    ResourceKey,
}

impl TraceConfig {
    /// Checks the configuration; [`Tracer::new`](super::Tracer::new) calls this too.
    pub fn validate(&self) -> Result<(), TraceError> {
        if !(0.0..=100.0).contains(&self.sampling_percent) {
            return Err(TraceError::Sampling(self.sampling_percent));
        }
        if self.service_name.is_empty() {
            return Err(TraceError::ServiceName);
        }
        if self.flush_interval.is_zero() {
            return Err(TraceError::FlushInterval);
        }
        if self.resource.iter().any(|(k, _)| k.is_empty()) {
            return Err(TraceError::ResourceKey);
        }
        Endpoint::parse(&self.endpoint, self.protocol).map(|_| ())
    }
}

/// A validated collector endpoint.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    /// `host:port` as written, for the `Host` header.
    pub authority: Authority,
    /// Host to connect to (IPv6 brackets stripped).
    pub host: String,
    /// Port to connect to (80 when the URL has none).
    pub port: u16,
    /// Request path for OTLP/HTTP.
    pub path: PathAndQuery,
}

impl Endpoint {
    /// Parses `http://host:port[/path]`; gRPC endpoints may not carry a path.
    pub fn parse(endpoint: &str, protocol: OtlpProtocol) -> Result<Self, TraceError> {
        let bad = |reason| TraceError::Endpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let uri: Uri = endpoint
            .parse()
            .map_err(|_| bad("not a URL (expected http://host:port)"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(TraceError::HttpsUnsupported(endpoint.to_string())),
            Some(_) => return Err(bad("scheme must be http")),
            None => return Err(bad("missing scheme (expected http://host:port)")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if uri.query().is_some() {
            return Err(bad("query strings are not supported"));
        }
        let path = match uri.path() {
            "" | "/" => PathAndQuery::from_static(DEFAULT_HTTP_PATH),
            _ if protocol == OtlpProtocol::Grpc => {
                return Err(bad("a gRPC endpoint cannot have a path"))
            }
            _ => uri
                .path_and_query()
                .cloned()
                .ok_or_else(|| bad("invalid path"))?,
        };
        Ok(Self {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            authority,
            path,
        })
    }
}

/// The tracer's counters, registered into the proxy's registry.
pub struct TraceMetrics {
    /// `halyard_trace_spans_exported_total`: spans the collector accepted.
    pub spans_exported: IntCounter,
    /// `halyard_trace_spans_dropped_total{reason="queue_full"}`.
    pub dropped_queue_full: IntCounter,
    /// `halyard_trace_spans_dropped_total{reason="export_failed"}` (incl. collector rejects).
    pub dropped_export_failed: IntCounter,
    /// `halyard_trace_spans_dropped_total{reason="exporter_closed"}`: the exporter future
    /// was dropped or never spawned.
    pub dropped_exporter_closed: IntCounter,
    /// `halyard_trace_exports_total{result="ok"}`.
    pub exports_ok: IntCounter,
    /// `halyard_trace_exports_total{result="error"}`.
    pub exports_error: IntCounter,
}

impl TraceMetrics {
    /// Creates the counters and registers them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let exported = IntCounter::with_opts(Opts::new(
            "halyard_trace_spans_exported_total",
            "Spans accepted by the OTLP collector.",
        ))?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "halyard_trace_spans_dropped_total",
                "Finished spans that were not exported, by reason.",
            ),
            &["reason"],
        )?;
        let exports = IntCounterVec::new(
            Opts::new(
                "halyard_trace_exports_total",
                "OTLP export requests, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(exports.clone()))?;
        Ok(Self {
            spans_exported: exported,
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: dropped.with_label_values(&["export_failed"]),
            dropped_exporter_closed: dropped.with_label_values(&["exporter_closed"]),
            exports_ok: exports.with_label_values(&["ok"]),
            exports_error: exports.with_label_values(&["error"]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: &str, protocol: OtlpProtocol) -> TraceConfig {
        TraceConfig {
            sampling_percent: 10.0,
            endpoint: endpoint.to_string(),
            protocol,
            service_name: "frontend.default".to_string(),
            resource: vec![],
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        }
    }

    #[test]
    fn validate() {
        use OtlpProtocol::{Grpc, Http};
        assert_eq!(cfg("http://collector:4317", Grpc).validate(), Ok(()));
        assert_eq!(cfg("http://127.0.0.1:4318", Http).validate(), Ok(()));
        assert_eq!(
            cfg("http://[::1]:4318/custom/path", Http).validate(),
            Ok(())
        );
        assert!(matches!(
            cfg("https://collector:4317", Grpc).validate(),
            Err(TraceError::HttpsUnsupported(_))
        ));
        for bad in [
            "collector:4317",
            "ftp://x:1",
            "http://",
            "http://u:p@x:1",
            "not a url",
        ] {
            assert!(
                matches!(cfg(bad, Http).validate(), Err(TraceError::Endpoint { .. })),
                "{bad}"
            );
        }
        assert!(cfg("http://c:4317/some/path", Grpc).validate().is_err());
        assert!(cfg("http://c:4318/v1/traces?x=1", Http).validate().is_err());
        let mut c = cfg("http://c:4317", Grpc);
        for p in [-1.0, 100.5, f64::NAN] {
            c.sampling_percent = p;
            assert!(matches!(c.validate(), Err(TraceError::Sampling(_))));
        }
        c.sampling_percent = 100.0;
        c.flush_interval = Duration::ZERO;
        assert_eq!(c.validate(), Err(TraceError::FlushInterval));
        c.flush_interval = DEFAULT_FLUSH_INTERVAL;
        c.resource = vec![(String::new(), "x".to_string())];
        assert_eq!(c.validate(), Err(TraceError::ResourceKey));
        c.resource.clear();
        c.service_name.clear();
        assert_eq!(c.validate(), Err(TraceError::ServiceName));
        let msg = cfg("https://c:4317", Grpc)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("https") && msg.contains("trust roots"),
            "{msg}"
        );
    }

    #[test]
    fn endpoint_paths() {
        let e = Endpoint::parse("http://127.0.0.1:4318", OtlpProtocol::Http).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        let e = Endpoint::parse("http://[::1]:9/custom/path", OtlpProtocol::Http).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 9, "/custom/path")
        );
        assert_eq!(e.authority.as_str(), "[::1]:9");
        let e = Endpoint::parse("http://collector", OtlpProtocol::Grpc).unwrap();
        assert_eq!(e.port, 80);
    }

    #[test]
    fn metrics_register() {
        let registry = Registry::new();
        let m = TraceMetrics::new(&registry).unwrap();
        m.dropped_queue_full.inc();
        m.exports_ok.inc();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"halyard_trace_spans_dropped_total".to_string()));
        assert!(names.contains(&"halyard_trace_exports_total".to_string()));
        assert!(TraceMetrics::new(&registry).is_err(), "double registration");
    }
}
