//! `MeshConfig` (`halyard.dev/v1alpha1`): Halyard's own mesh-wide settings, a small subset of
//! Istio's MeshConfig.
//!
//! ```yaml
//! apiVersion: halyard.dev/v1alpha1
//! kind: MeshConfig
//! metadata:
//!   name: mesh
//! spec:
//!   trustDomain: cluster.local        # SPIFFE trust domain of every identity
//!   rootNamespace: istio-system       # policies here without a selector apply mesh-wide
//!   outboundTrafficPolicy:
//!     mode: ALLOW_ANY                 # or REGISTRY_ONLY: unknown destinations are refused
//!   defaultTracingSampling: 1.0       # percent of requests traced, 0-100
//!   accessLogging:
//!     enabled: true                   # JSON lines on stdout
//!     fields: [start_time, method, path, response_code, duration]   # default: all
//!   metrics:
//!     enabled: true                   # istio_* request and TCP metrics on /stats/prometheus
//!   resetDeniedStreams: true          # gRPC calls in flight that a new policy denies end
//!                                     # with PERMISSION_DENIED
//!   tracing:
//!     otlpEndpoint: http://127.0.0.1:4317   # plain http: a local collector relays further
//!     protocol: grpc                  # or http (OTLP/HTTP protobuf)
//! ```

use serde::Deserialize;

use super::error::{Cx, FieldPath};
use super::values::{check_percentage, is_dns_label};

/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The default root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Fields the proxy can write in a JSON access log line.
pub use halyard_xds::ACCESS_LOG_FIELDS;

/// `MeshConfig.spec`. Every field is optional; see the module docs for defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    /// SPIFFE trust domain (default `cluster.local`).
    pub trust_domain: Option<String>,
    /// Namespace whose selector-less policies apply to the whole mesh (default `istio-system`).
    pub root_namespace: Option<String>,
    /// What sidecars do with traffic to hosts no ServiceEntry defines.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Percentage of requests traced, 0-100 (default 1).
    pub default_tracing_sampling: Option<f64>,
    /// Access logs.
    pub access_logging: Option<AccessLogging>,
    /// Trace export.
    pub tracing: Option<Tracing>,
    /// Istio's standard metrics.
    pub metrics: Option<Metrics>,
    /// Whether gRPC calls in flight that a newly applied policy denies are ended (default
    /// true).
    pub reset_denied_streams: Option<bool>,
}

/// `metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    /// Whether proxies record `istio_*` metrics (default true).
    pub enabled: Option<bool>,
}

/// `outboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// The mode (default `ALLOW_ANY`).
    pub mode: Option<OutboundMode>,
}

/// `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Unknown destinations are passed through.
    AllowAny,
    /// Unknown destinations are refused.
    RegistryOnly,
}

/// `accessLogging`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogging {
    /// Whether proxies write access logs (default true).
    pub enabled: Option<bool>,
    /// Which fields, from [`ACCESS_LOG_FIELDS`] (default all).
    pub fields: Option<Vec<String>>,
}

/// `tracing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// OTLP collector, `http://host:port` or `https://host:port` (required when tracing is set).
    pub otlp_endpoint: Option<String>,
    /// OTLP transport (default `grpc`).
    pub protocol: Option<OtlpProtocol>,
}

/// `tracing.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP (protobuf).
    Http,
}

impl MeshConfig {
    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN)
    }

    /// The root namespace.
    pub fn root_namespace(&self) -> &str {
        self.root_namespace
            .as_deref()
            .unwrap_or(DEFAULT_ROOT_NAMESPACE)
    }

    /// The outbound traffic mode.
    pub fn outbound_mode(&self) -> OutboundMode {
        self.outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode)
            .unwrap_or(OutboundMode::AllowAny)
    }

    /// The tracing sample percentage.
    pub fn tracing_sampling(&self) -> f64 {
        self.default_tracing_sampling.unwrap_or(1.0)
    }

    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        let spec = FieldPath::root().f("spec");
        if let Some(td) = &self.trust_domain {
            let ok = !td.is_empty()
                && td.len() <= 255
                && td.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
                });
            if !ok {
                cx.error(
                    &spec.f("trustDomain"),
                    format!("invalid trust domain `{td}`: want lowercase letters, digits, `.`, `-` and `_`"),
                );
            }
        }
        if let Some(ns) = &self.root_namespace {
            if !is_dns_label(ns) {
                cx.error(
                    &spec.f("rootNamespace"),
                    format!("invalid namespace `{ns}`"),
                );
            }
        }
        if let Some(s) = self.default_tracing_sampling {
            check_percentage(cx, &spec.f("defaultTracingSampling"), s);
        }
        if let Some(fields) = self.access_logging.as_ref().and_then(|a| a.fields.as_ref()) {
            let p = spec.f("accessLogging").f("fields");
            for (i, f) in fields.iter().enumerate() {
                if !ACCESS_LOG_FIELDS.contains(&f.as_str()) {
                    cx.error(
                        &p.i(i),
                        format!(
                            "unknown access log field `{f}` (one of {})",
                            ACCESS_LOG_FIELDS.join(", ")
                        ),
                    );
                } else if fields[..i].contains(f) {
                    cx.error(&p.i(i), format!("field `{f}` is listed twice"));
                }
            }
        }
        if let Some(t) = &self.tracing {
            let p = spec.f("tracing");
            match &t.otlp_endpoint {
                None => cx.required(&p.f("otlpEndpoint")),
                Some(e) => {
                    if let Err(msg) = check_endpoint(e) {
                        cx.error(&p.f("otlpEndpoint"), msg);
                    }
                }
            }
        }
    }
}

/// Checks `http://host:port[/path]`.
fn check_endpoint(e: &str) -> Result<(), String> {
    let bad = || format!("`{e}` is not an endpoint like http://collector:4317");
    if e.starts_with("https://") {
        // Proxies have no trust roots for collectors yet; a local collector relays further.
        return Err(format!(
            "`{e}`: https collectors are not supported yet; export to a collector over http://"
        ));
    }
    let rest = e.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if host.is_empty() || !port_ok {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let m = MeshConfig::default();
        assert_eq!(m.trust_domain(), "cluster.local");
        assert_eq!(m.root_namespace(), "istio-system");
        assert_eq!(m.outbound_mode(), OutboundMode::AllowAny);
    }

    #[test]
    fn endpoints() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("http://otel.example.com:4318/v1/traces").is_ok());
        assert!(check_endpoint("https://otel.example.com:4318/v1/traces").is_err());
        assert!(check_endpoint("[::1]:4317").is_err());
        assert!(check_endpoint("http://collector").is_err());
        assert!(check_endpoint("grpc://collector:4317").is_err());
    }
}
