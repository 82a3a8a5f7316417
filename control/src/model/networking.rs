//! `networking.istio.io` kinds: `ServiceEntry`, `WorkloadEntry`, `VirtualService` and
//! `DestinationRule`, with Istio's field names and types (`networking/v1alpha3/*.proto`,
//! served as `v1`, `v1beta1` and `v1alpha3`), and the checks that need only one document.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::{Cx, FieldPath};
use super::values::{
    check_cidr, check_export_to, check_host, check_labels, check_percentage, check_port,
    is_dns_label, is_dns_subdomain, null_as_default, Cidr, Duration, Percent, StringMatch,
    WorkloadSelector,
};

const MS: std::time::Duration = std::time::Duration::from_millis(1);
const ZERO: std::time::Duration = std::time::Duration::ZERO;

// ---------------------------------------------------------------------------------------------
// ServiceEntry and WorkloadEntry

/// `ServiceEntry`: adds a service (hosts, ports, endpoints) to the mesh's registry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    /// Host names of the service (required); a `*.` wildcard prefix is allowed.
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDR blocks of the service.
    pub addresses: Vec<String>,
    /// The service's ports.
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh (default `MESH_EXTERNAL`).
    pub location: Option<Location>,
    /// How endpoints are found (default `NONE`).
    pub resolution: Option<Resolution>,
    /// Endpoints written inline.
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects `WorkloadEntry` resources of the same namespace as endpoints instead.
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces that may see the service (`.`, `*`, or names; default all).
    pub export_to: Vec<String>,
    /// SANs to verify on the server certificate (unsupported: Halyard verifies the SPIFFE
    /// identity of each endpoint).
    pub subject_alt_names: Vec<String>,
}

/// `ServicePort`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// The port number (required).
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`, ... (case-insensitive).
    pub protocol: Option<String>,
    /// Port name (required).
    pub name: String,
    /// The endpoints' port when it differs from `number`.
    pub target_port: Option<u32>,
}

/// `ServiceEntry.Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh.
    MeshExternal,
    /// Part of the mesh (workloads with sidecars).
    MeshInternal,
}

/// `ServiceEntry.Resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the original destination address.
    None,
    /// Use the endpoints' addresses.
    Static,
    /// Resolve the endpoints' (or hosts') names with DNS.
    Dns,
    /// DNS, first address only (unsupported).
    DnsRoundRobin,
    /// DNS of the requested host name (unsupported).
    DynamicDns,
}

/// `WorkloadEntry`: one workload outside Kubernetes (a VM), also the shape of
/// `ServiceEntry.endpoints`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// IP address or DNS name (required unless `network` is set).
    pub address: String,
    /// Service port name to this endpoint's port.
    pub ports: BTreeMap<String, u32>,
    /// The workload's labels.
    pub labels: BTreeMap<String, String>,
    /// Network of the endpoint (multi-network meshes).
    pub network: String,
    /// `region/zone/subzone`.
    pub locality: String,
    /// Load-balancing weight.
    pub weight: Option<u32>,
    /// The workload's service account: its identity is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>`.
    pub service_account: String,
}

/// Protocol names Istio knows for ports, upper-cased.
const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP",
    "HBONE",
];
/// Of those, the ones Halyard does not carry.
const UNSUPPORTED_PROTOCOLS: &[&str] = &["UDP", "HBONE"];

impl ServiceEntry {
    /// The resolution, `NONE` when not given.
    pub fn resolution(&self) -> Resolution {
        self.resolution.unwrap_or(Resolution::None)
    }

    /// The location, `MESH_EXTERNAL` when not given.
    pub fn location(&self) -> Location {
        self.location.unwrap_or(Location::MeshExternal)
    }

    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        let spec = FieldPath::root().f("spec");
        if self.hosts.is_empty() {
            cx.required(&spec.f("hosts"));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            check_host(cx, &spec.f("hosts").i(i), h, false);
            if h.parse::<std::net::IpAddr>().is_ok() {
                cx.error(
                    &spec.f("hosts").i(i),
                    format!("`{h}` is an IP address: put it in `addresses`"),
                );
            }
        }
        if self.ports.is_empty() {
            cx.error(&spec.f("ports"), "a ServiceEntry needs at least one port");
        }
        let resolution = self.resolution();
        for (i, a) in self.addresses.iter().enumerate() {
            let p = spec.f("addresses").i(i);
            match Cidr::parse(a) {
                Err(e) => cx.error(&p, e),
                Ok(c)
                    if a.contains('/')
                        && !matches!(resolution, Resolution::None | Resolution::Static) =>
                {
                    cx.error(
                        &p,
                        format!("CIDR block {c} is allowed only with resolution NONE or STATIC"),
                    )
                }
                Ok(_) => {}
            }
        }
        for (i, port) in self.ports.iter().enumerate() {
            let p = spec.f("ports").i(i);
            check_port(cx, &p.f("number"), port.number);
            if port.name.is_empty() {
                cx.required(&p.f("name"));
            } else if !is_dns_label(&port.name) {
                cx.error(
                    &p.f("name"),
                    format!("invalid port name `{}`: want a DNS-1123 label", port.name),
                );
            }
            if let Some(proto) = &port.protocol {
                let up = proto.to_ascii_uppercase();
                if UNSUPPORTED_PROTOCOLS.contains(&up.as_str()) {
                    cx.unsupported(&p.f("protocol"), format!("protocol {proto}"));
                } else if !PROTOCOLS.contains(&up.as_str()) {
                    cx.error(
                        &p.f("protocol"),
                        format!("unknown protocol `{proto}` (one of HTTP, HTTPS, GRPC, HTTP2, TCP, TLS, MONGO, MYSQL, REDIS)"),
                    );
                }
            }
            if let Some(t) = port.target_port {
                check_port(cx, &p.f("targetPort"), t);
            }
            let earlier = &self.ports[..i];
            if port.number != 0 && earlier.iter().any(|o| o.number == port.number) {
                cx.error(
                    &p.f("number"),
                    format!("port {} is listed twice", port.number),
                );
            }
            if !port.name.is_empty() && earlier.iter().any(|o| o.name == port.name) {
                cx.error(
                    &p.f("name"),
                    format!("port name `{}` is listed twice", port.name),
                );
            }
        }
        match resolution {
            Resolution::DnsRoundRobin => cx.unsupported(
                &spec.f("resolution"),
                "resolution DNS_ROUND_ROBIN (use DNS)",
            ),
            Resolution::DynamicDns => {
                cx.unsupported(&spec.f("resolution"), "resolution DYNAMIC_DNS")
            }
            Resolution::None if !self.endpoints.is_empty() => cx.error(
                &spec.f("endpoints"),
                "resolution NONE cannot have endpoints (use STATIC or DNS)",
            ),
            Resolution::Dns if self.endpoints.is_empty() && self.workload_selector.is_none() => {
                for (i, h) in self.hosts.iter().enumerate() {
                    if h.starts_with('*') {
                        cx.error(
                            &spec.f("hosts").i(i),
                            format!(
                                "wildcard host `{h}` cannot be resolved with DNS without endpoints"
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
        if !self.endpoints.is_empty() && self.workload_selector.is_some() {
            cx.error(
                &spec.f("workloadSelector"),
                "only one of endpoints or workloadSelector may be set",
            );
        }
        if let Some(sel) = &self.workload_selector {
            let p = spec.f("workloadSelector");
            if self.location() != Location::MeshInternal {
                cx.error(
                    &p,
                    "workloadSelector applies only to location MESH_INTERNAL",
                );
            }
            check_labels(cx, &p.f("labels"), &sel.labels);
        }
        let port_names: Vec<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let p = spec.f("endpoints").i(i);
            ep.check_at(cx, &p, Some(&port_names));
            if resolution == Resolution::Static
                && !ep.address.is_empty()
                && ep.address.parse::<std::net::IpAddr>().is_err()
                && !ep.address.starts_with("unix://")
            {
                cx.error(
                    &p.f("address"),
                    format!("`{}` is not an IP address, as resolution STATIC requires (use DNS for names)", ep.address),
                );
            }
        }
        check_export_to(cx, &spec.f("exportTo"), &self.export_to);
        if !self.subject_alt_names.is_empty() {
            cx.unsupported(
                &spec.f("subjectAltNames"),
                "subjectAltNames (endpoints are verified by their SPIFFE identity)",
            );
        }
    }
}

impl WorkloadEntry {
    /// The service account, `default` when not given (as Kubernetes).
    pub fn service_account(&self) -> &str {
        match self.service_account.as_str() {
            "" => "default",
            s => s,
        }
    }

    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        self.check_at(cx, &FieldPath::root().f("spec"), None);
    }

    /// Checks an entry at `p`; `port_names` are the enclosing ServiceEntry's port names.
    fn check_at(&self, cx: &mut Cx<'_>, p: &FieldPath, port_names: Option<&[&str]>) {
        if self.address.is_empty() {
            if self.network.is_empty() {
                cx.required(&p.f("address"));
            }
        } else if self.address.starts_with("unix://") {
            cx.unsupported(&p.f("address"), "Unix domain socket endpoints");
        } else if self.address.parse::<std::net::IpAddr>().is_err() {
            if self.address.contains(['/', ':', '*']) {
                cx.error(
                    &p.f("address"),
                    format!(
                        "`{}` is not an IP address or DNS name (without port)",
                        self.address
                    ),
                );
            } else {
                check_host(cx, &p.f("address"), &self.address, false);
            }
        }
        if !self.network.is_empty() {
            cx.unsupported(&p.f("network"), "multi-network endpoints (network)");
        }
        for (name, port) in &self.ports {
            let pp = p.f("ports").k(name);
            check_port(cx, &pp, *port);
            if let Some(names) = port_names {
                if !names.contains(&name.as_str()) {
                    cx.error(
                        &pp,
                        format!("`{name}` names no port of this ServiceEntry (ports map port names to endpoint ports)"),
                    );
                }
            }
        }
        check_labels(cx, &p.f("labels"), &self.labels);
        if !self.service_account.is_empty() && !is_dns_subdomain(&self.service_account) {
            cx.error(
                &p.f("serviceAccount"),
                format!(
                    "invalid service account `{}`: want lowercase letters, digits, `-` and `.`",
                    self.service_account
                ),
            );
        }
        if !self.locality.is_empty()
            && (self.locality.split('/').count() > 3 || self.locality.split('/').any(str::is_empty))
        {
            cx.error(
                &p.f("locality"),
                format!(
                    "invalid locality `{}`: want region[/zone[/subzone]]",
                    self.locality
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualService

/// `VirtualService`: how requests to a set of hosts are routed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualService {
    /// Hosts the rules apply to (required); short names resolve in the resource's namespace.
    pub hosts: Vec<String>,
    /// Gateways and sidecars that apply the routes; only `mesh` (all sidecars) is supported.
    pub gateways: Vec<String>,
    /// HTTP routes, first match wins.
    pub http: Vec<HttpRoute>,
    /// Routes for unterminated TLS (by SNI).
    pub tls: Vec<TlsRoute>,
    /// Routes for opaque TCP.
    pub tcp: Vec<TcpRoute>,
    /// Namespaces that may see the rules.
    pub export_to: Vec<String>,
}

/// `HTTPRoute`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    /// Name for logs and debugging.
    pub name: Option<String>,
    /// Conditions, any of which selects the route.
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly (unsupported).
    pub direct_response: Option<HttpDirectResponse>,
    /// Delegate to another VirtualService (unsupported).
    pub delegate: Option<Delegate>,
    /// Rewrite path or authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout (Go-style duration; `0s` disables).
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror requests to this destination too.
    pub mirror: Option<Destination>,
    /// Several mirrors, each with its own percentage.
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated integer percentage of `mirror`.
    pub mirror_percent: Option<u32>,
    /// Percentage of requests mirrored (default 100).
    pub mirror_percentage: Option<Percent>,
    /// CORS (parsed, unsupported).
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation for all destinations.
    pub headers: Option<Headers>,
}

/// `HTTPMatchRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// Name for logs.
    pub name: Option<String>,
    /// Path match.
    pub uri: Option<StringMatch>,
    /// Scheme match.
    pub scheme: Option<StringMatch>,
    /// Method match.
    pub method: Option<StringMatch>,
    /// Authority (Host) match.
    pub authority: Option<StringMatch>,
    /// Header matches; keys are lowercase header names, an empty match tests presence.
    pub headers: BTreeMap<String, StringMatch>,
    /// Destination port.
    pub port: Option<u32>,
    /// Labels of the calling workload.
    pub source_labels: BTreeMap<String, String>,
    /// Gateways (only `mesh` is supported).
    pub gateways: Vec<String>,
    /// Query parameter matches (exact or regex).
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive `uri` exact/prefix matching.
    pub ignore_uri_case: bool,
    /// Headers that must not match.
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace of the calling workload.
    pub source_namespace: Option<String>,
    /// Stats prefix (unsupported).
    pub stat_prefix: Option<String>,
}

/// `HTTPRouteDestination`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteDestination {
    /// Where to send the request (required).
    pub destination: Option<Destination>,
    /// Share of traffic, 0-100.
    pub weight: Option<i32>,
    /// Header manipulation for this destination.
    pub headers: Option<Headers>,
}

/// `RouteDestination` (TCP and TLS routes).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where to send the connection (required).
    pub destination: Option<Destination>,
    /// Share of connections, 0-100.
    pub weight: Option<i32>,
}

/// `Destination`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// A service host (required); short names resolve in the VirtualService's namespace.
    pub host: String,
    /// A subset defined by a DestinationRule for the host.
    pub subset: Option<String>,
    /// The service port, needed when the service has several.
    pub port: Option<PortSelector>,
}

/// `PortSelector`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    /// Port number.
    pub number: u32,
}

/// `HTTPRedirect`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRedirect {
    /// New path.
    pub uri: Option<String>,
    /// New authority.
    pub authority: Option<String>,
    /// New port.
    pub port: Option<u32>,
    /// Port from the protocol or the request (unsupported).
    pub derive_port: Option<String>,
    /// New scheme.
    pub scheme: Option<String>,
    /// Status code (default 301).
    pub redirect_code: Option<u32>,
}

/// `HTTPDirectResponse` (parsed, unsupported).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpDirectResponse {
    /// Status code.
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
}

/// `HTTPBody`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpBody {
    /// Text body.
    pub string: Option<String>,
    /// Base64 body.
    pub bytes: Option<String>,
}

/// `Delegate` (parsed, unsupported).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Delegate {
    /// VirtualService name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
}

/// `HTTPRewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRewrite {
    /// Replaces the matched prefix (or the whole path).
    pub uri: Option<String>,
    /// Replaces the authority.
    pub authority: Option<String>,
    /// Regex rewrite of the path (unsupported).
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RegexRewrite {
    /// The regex.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The replacement.
    pub rewrite: String,
}

/// `HTTPRetry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    /// Number of retries (required; 0 disables).
    pub attempts: Option<i32>,
    /// Timeout of each try, at least 1ms.
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated retry conditions (Envoy's `x-envoy-retry-on` names or status codes).
    pub retry_on: Option<String>,
    /// Whether retries may go to other localities.
    pub retry_remote_localities: Option<bool>,
    /// Whether retries avoid hosts already tried.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries.
    pub backoff: Option<Duration>,
}

/// `CorsPolicy` (parsed, unsupported).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Deprecated origins.
    pub allow_origin: Vec<String>,
    /// Allowed origins.
    pub allow_origins: Vec<StringMatch>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed headers.
    pub allow_headers: Vec<String>,
    /// Exposed headers.
    pub expose_headers: Vec<String>,
    /// Preflight cache lifetime.
    pub max_age: Option<Duration>,
    /// Credentials allowed.
    pub allow_credentials: Option<bool>,
    /// `FORWARD` or `IGNORE`.
    pub unmatched_preflights: Option<String>,
}

/// `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpFaultInjection {
    /// Delay requests.
    pub delay: Option<Delay>,
    /// Abort requests.
    pub abort: Option<Abort>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    /// Deprecated integer percentage.
    pub percent: Option<i32>,
    /// The delay (required), at least 1ms.
    pub fixed_delay: Option<Duration>,
    /// Hidden in Istio's docs; unsupported.
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed (default all).
    pub percentage: Option<Percent>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    /// HTTP status to answer with.
    pub http_status: Option<i32>,
    /// gRPC status name to answer with (`UNAVAILABLE`).
    pub grpc_status: Option<String>,
    /// HTTP/2 error (unsupported).
    pub http2_error: Option<String>,
    /// Share of requests aborted (default all).
    pub percentage: Option<Percent>,
}

/// `HTTPMirrorPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    /// Mirror destination (required).
    pub destination: Option<Destination>,
    /// Share of requests mirrored (default 100).
    pub percentage: Option<Percent>,
}

/// `Headers`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Headers {
    /// Applied to requests before forwarding.
    pub request: Option<HeaderOperations>,
    /// Applied to responses before returning them.
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderOperations {
    /// Overwrite.
    pub set: BTreeMap<String, String>,
    /// Append.
    pub add: BTreeMap<String, String>,
    /// Remove.
    pub remove: Vec<String>,
}

/// `TLSRoute`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRoute {
    /// Conditions (required).
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Destinations.
    pub route: Vec<RouteDestination>,
}

/// `TLSMatchAttributes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    /// SNI names (required), within the VirtualService's hosts.
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDRs.
    pub destination_subnets: Vec<String>,
    /// Destination port.
    pub port: Option<u32>,
    /// Labels of the calling workload.
    pub source_labels: BTreeMap<String, String>,
    /// Gateways (only `mesh`).
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    pub source_namespace: Option<String>,
}

/// `TCPRoute`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRoute {
    /// Conditions.
    #[serde(rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    /// Destinations.
    pub route: Vec<RouteDestination>,
}

/// `L4MatchAttributes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    pub destination_subnets: Vec<String>,
    /// Destination port.
    pub port: Option<u32>,
    /// Source IP or CIDR (hidden in Istio's docs).
    pub source_subnet: Option<String>,
    /// Labels of the calling workload.
    pub source_labels: BTreeMap<String, String>,
    /// Gateways (only `mesh`).
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    pub source_namespace: Option<String>,
}

/// Envoy retry conditions accepted in `retryOn` (besides HTTP status codes).
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names accepted in `fault.abort.grpcStatus`, in code order (`OK` = 0).
pub(crate) const GRPC_STATUS: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Whether `name` is an HTTP header name token (RFC 9110 `tchar`s).
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks `gateways`: only the reserved `mesh` (all sidecars) is supported.
fn check_gateways(cx: &mut Cx<'_>, path: &FieldPath, gateways: &[String]) {
    for (i, g) in gateways.iter().enumerate() {
        if g != "mesh" {
            cx.unsupported(
                &path.i(i),
                format!("gateway `{g}` (only `mesh`, the sidecars, is supported)"),
            );
        }
    }
}

/// Whether host pattern `pattern` (`*`, `*.example.com`, `a.example.com`) covers `host`,
/// which may itself be a wildcard (then it must be within `pattern`).
pub(crate) fn host_covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        // `*.example.com` covers `a.example.com`, `a.b.example.com` and `*.b.example.com`.
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => false,
    }
}

impl VirtualService {
    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        let spec = FieldPath::root().f("spec");
        if self.hosts.is_empty() {
            cx.required(&spec.f("hosts"));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let p = spec.f("hosts").i(i);
            check_host(cx, &p, h, false);
            if h.parse::<std::net::IpAddr>().is_ok() {
                cx.error(
                    &p,
                    format!("`{h}`: IP addresses are allowed only for gateways"),
                );
            }
            if self.hosts[..i].contains(h) {
                cx.error(&p, format!("host `{h}` is listed twice"));
            }
        }
        check_gateways(cx, &spec.f("gateways"), &self.gateways);
        if self.http.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            cx.error(&spec, "at least one of http, tcp or tls routes is required");
        }
        for (i, r) in self.http.iter().enumerate() {
            r.check(cx, &spec.f("http").i(i));
        }
        for (i, r) in self.tls.iter().enumerate() {
            let p = spec.f("tls").i(i);
            if r.matches.is_empty() {
                cx.required(&p.f("match"));
            }
            for (j, m) in r.matches.iter().enumerate() {
                let mp = p.f("match").i(j);
                if m.sni_hosts.is_empty() {
                    cx.required(&mp.f("sniHosts"));
                }
                for (k, sni) in m.sni_hosts.iter().enumerate() {
                    let sp = mp.f("sniHosts").i(k);
                    check_host(cx, &sp, sni, true);
                    if !self.hosts.iter().any(|h| host_covers(h, sni)) {
                        cx.error(
                            &sp,
                            format!("SNI host `{sni}` is not within the VirtualService's hosts"),
                        );
                    }
                }
                for (k, s) in m.destination_subnets.iter().enumerate() {
                    check_cidr(cx, &mp.f("destinationSubnets").i(k), s);
                }
                if let Some(port) = m.port {
                    check_port(cx, &mp.f("port"), port);
                }
                check_labels(cx, &mp.f("sourceLabels"), &m.source_labels);
                check_gateways(cx, &mp.f("gateways"), &m.gateways);
                check_source_namespace(cx, &mp.f("sourceNamespace"), &m.source_namespace);
            }
            check_l4_destinations(cx, &p.f("route"), &r.route);
        }
        for (i, r) in self.tcp.iter().enumerate() {
            let p = spec.f("tcp").i(i);
            for (j, m) in r.matches.iter().enumerate() {
                let mp = p.f("match").i(j);
                for (k, s) in m.destination_subnets.iter().enumerate() {
                    check_cidr(cx, &mp.f("destinationSubnets").i(k), s);
                }
                if let Some(s) = &m.source_subnet {
                    check_cidr(cx, &mp.f("sourceSubnet"), s);
                }
                if let Some(port) = m.port {
                    check_port(cx, &mp.f("port"), port);
                }
                check_labels(cx, &mp.f("sourceLabels"), &m.source_labels);
                check_gateways(cx, &mp.f("gateways"), &m.gateways);
                check_source_namespace(cx, &mp.f("sourceNamespace"), &m.source_namespace);
            }
            check_l4_destinations(cx, &p.f("route"), &r.route);
        }
        check_export_to(cx, &spec.f("exportTo"), &self.export_to);
    }

    /// Every destination of every route, with its path: route destinations and mirrors.
    pub fn destinations(&self) -> Vec<(FieldPath, &Destination)> {
        let spec = FieldPath::root().f("spec");
        let mut out = Vec::new();
        for (i, r) in self.http.iter().enumerate() {
            let p = spec.f("http").i(i);
            for (j, d) in r.route.iter().enumerate() {
                if let Some(dest) = &d.destination {
                    out.push((p.f("route").i(j).f("destination"), dest));
                }
            }
            if let Some(m) = &r.mirror {
                out.push((p.f("mirror"), m));
            }
            for (j, m) in r.mirrors.iter().enumerate() {
                if let Some(dest) = &m.destination {
                    out.push((p.f("mirrors").i(j).f("destination"), dest));
                }
            }
        }
        for (name, routes) in [
            ("tls", self.tls.iter().map(|r| &r.route).collect::<Vec<_>>()),
            ("tcp", self.tcp.iter().map(|r| &r.route).collect::<Vec<_>>()),
        ] {
            for (i, route) in routes.into_iter().enumerate() {
                for (j, d) in route.iter().enumerate() {
                    if let Some(dest) = &d.destination {
                        out.push((spec.f(name).i(i).f("route").i(j).f("destination"), dest));
                    }
                }
            }
        }
        out
    }
}

fn check_source_namespace(cx: &mut Cx<'_>, path: &FieldPath, ns: &Option<String>) {
    if let Some(ns) = ns {
        if !is_dns_label(ns) {
            cx.error(path, format!("invalid namespace `{ns}`"));
        }
    }
}

/// Checks a destination's own fields (references are checked across documents).
fn check_destination(cx: &mut Cx<'_>, path: &FieldPath, d: &Destination) {
    if d.host.is_empty() {
        cx.required(&path.f("host"));
    } else {
        check_host(cx, &path.f("host"), &d.host, false);
        if d.host.starts_with('*') {
            cx.error(&path.f("host"), "a destination host cannot be a wildcard");
        }
    }
    if let Some(s) = &d.subset {
        if s.is_empty() {
            cx.error(&path.f("subset"), "subset must not be empty");
        }
    }
    if let Some(port) = &d.port {
        check_port(cx, &path.f("port").f("number"), port.number);
    }
}

/// Checks weights: none negative or above 100, and a sum of 100 when there are several.
fn check_weights(cx: &mut Cx<'_>, path: &FieldPath, weights: &[Option<i32>]) {
    let mut sum: i64 = 0;
    for (i, w) in weights.iter().enumerate() {
        let w = w.unwrap_or(0);
        if !(0..=100).contains(&w) {
            cx.error(
                &path.i(i).f("weight"),
                format!("weight {w} is outside 0-100"),
            );
        }
        sum += i64::from(w);
    }
    if weights.len() > 1 && sum != 100 {
        cx.error(
            path,
            format!(
                "weights of the {} destinations add up to {sum}, not 100",
                weights.len()
            ),
        );
    }
}

fn check_l4_destinations(cx: &mut Cx<'_>, path: &FieldPath, route: &[RouteDestination]) {
    if route.is_empty() {
        cx.required(path);
    }
    for (j, d) in route.iter().enumerate() {
        match &d.destination {
            Some(dest) => check_destination(cx, &path.i(j).f("destination"), dest),
            None => cx.required(&path.i(j).f("destination")),
        }
    }
    let weights: Vec<Option<i32>> = route.iter().map(|d| d.weight).collect();
    check_weights(cx, path, &weights);
}

fn check_header_matches(
    cx: &mut Cx<'_>,
    path: &FieldPath,
    headers: &BTreeMap<String, StringMatch>,
) {
    for (name, m) in headers {
        let p = path.k(name);
        if !is_header_name(name) {
            cx.error(&p, format!("invalid header name `{name}`"));
        } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
            cx.error(&p, format!("header name `{name}` must be lowercase"));
        }
        m.check(cx, &p, true, true);
    }
}

fn check_header_ops(cx: &mut Cx<'_>, path: &FieldPath, h: &Headers) {
    for (which, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let p = path.f(which);
        for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
            for name in map.keys() {
                if !is_header_name(name) {
                    cx.error(&p.f(field).k(name), format!("invalid header name `{name}`"));
                }
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            if !is_header_name(name) {
                cx.error(&p.f("remove").i(i), format!("invalid header name `{name}`"));
            }
        }
    }
}

impl HttpRoute {
    fn check(&self, cx: &mut Cx<'_>, p: &FieldPath) {
        for (j, m) in self.matches.iter().enumerate() {
            let mp = p.f("match").i(j);
            for (field, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    sm.check(cx, &mp.f(field), false, true);
                }
            }
            check_header_matches(cx, &mp.f("headers"), &m.headers);
            check_header_matches(cx, &mp.f("withoutHeaders"), &m.without_headers);
            for (name, qm) in &m.query_params {
                qm.check(cx, &mp.f("queryParams").k(name), false, false);
            }
            if let Some(port) = m.port {
                check_port(cx, &mp.f("port"), port);
            }
            check_labels(cx, &mp.f("sourceLabels"), &m.source_labels);
            check_gateways(cx, &mp.f("gateways"), &m.gateways);
            check_source_namespace(cx, &mp.f("sourceNamespace"), &m.source_namespace);
            if m.stat_prefix.is_some() {
                cx.unsupported(&mp.f("statPrefix"), "statPrefix");
            }
        }
        let actions = [
            !self.route.is_empty(),
            self.redirect.is_some(),
            self.direct_response.is_some(),
            self.delegate.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if actions == 0 {
            cx.error(
                p,
                "one of route, redirect, directResponse or delegate is required",
            );
        } else if actions > 1 {
            cx.error(
                p,
                "only one of route, redirect, directResponse or delegate may be set",
            );
        }
        for (j, d) in self.route.iter().enumerate() {
            let dp = p.f("route").i(j);
            match &d.destination {
                Some(dest) => check_destination(cx, &dp.f("destination"), dest),
                None => cx.required(&dp.f("destination")),
            }
            if let Some(h) = &d.headers {
                check_header_ops(cx, &dp.f("headers"), h);
            }
        }
        let weights: Vec<Option<i32>> = self.route.iter().map(|d| d.weight).collect();
        check_weights(cx, &p.f("route"), &weights);
        if let Some(r) = &self.redirect {
            let rp = p.f("redirect");
            if self.rewrite.is_some() {
                cx.error(&p.f("rewrite"), "rewrite cannot be used with redirect");
            }
            if let Some(code) = r.redirect_code {
                if ![301, 302, 303, 307, 308].contains(&code) {
                    cx.error(
                        &rp.f("redirectCode"),
                        format!("redirect code {code} is not one of 301, 302, 303, 307, 308"),
                    );
                }
            }
            if let Some(port) = r.port {
                check_port(cx, &rp.f("port"), port);
            }
            if r.derive_port.is_some() {
                cx.unsupported(&rp.f("derivePort"), "redirect.derivePort");
            }
            if let Some(s) = &r.scheme {
                if s != "http" && s != "https" {
                    cx.error(
                        &rp.f("scheme"),
                        format!("scheme `{s}` is not http or https"),
                    );
                }
            }
            if r.uri.is_none() && r.authority.is_none() && r.port.is_none() && r.scheme.is_none() {
                cx.error(
                    &rp,
                    "a redirect needs at least one of uri, authority, port or scheme",
                );
            }
        }
        if self.direct_response.is_some() {
            cx.unsupported(&p.f("directResponse"), "directResponse");
        }
        if self.delegate.is_some() {
            cx.unsupported(&p.f("delegate"), "delegate (VirtualService chaining)");
        }
        if let Some(rw) = &self.rewrite {
            if rw.uri_regex_rewrite.is_some() {
                cx.unsupported(&p.f("rewrite").f("uriRegexRewrite"), "uriRegexRewrite");
            }
            if rw
                .uri
                .as_deref()
                .is_some_and(|u| !u.is_empty() && !u.starts_with('/'))
            {
                cx.error(
                    &p.f("rewrite").f("uri"),
                    "a rewritten uri must start with `/`",
                );
            }
        }
        if let Some(t) = &self.timeout {
            t.check(cx, &p.f("timeout"), ZERO);
        }
        if let Some(r) = &self.retries {
            let rp = p.f("retries");
            match r.attempts {
                None => cx.required(&rp.f("attempts")),
                Some(a) if a < 0 => cx.error(
                    &rp.f("attempts"),
                    format!("attempts {a} must not be negative"),
                ),
                Some(_) => {}
            }
            if let Some(t) = &r.per_try_timeout {
                t.check(cx, &rp.f("perTryTimeout"), MS);
            }
            if let Some(b) = &r.backoff {
                b.check(cx, &rp.f("backoff"), MS);
            }
            if let Some(on) = &r.retry_on {
                for cond in on.split(',').map(str::trim) {
                    let status = cond.parse::<u16>().is_ok_and(|s| (100..=599).contains(&s));
                    if !status && !RETRY_ON.contains(&cond) {
                        cx.error(
                            &rp.f("retryOn"),
                            format!("unknown retry condition `{cond}` (Envoy's x-envoy-retry-on names, gRPC status names or HTTP status codes)"),
                        );
                    }
                }
            }
        }
        if let Some(f) = &self.fault {
            let fp = p.f("fault");
            if f.delay.is_none() && f.abort.is_none() {
                cx.error(&fp, "a fault needs delay or abort");
            }
            if let Some(d) = &f.delay {
                let dp = fp.f("delay");
                match &d.fixed_delay {
                    Some(fd) => fd.check(cx, &dp.f("fixedDelay"), MS),
                    None if d.exponential_delay.is_none() => cx.required(&dp.f("fixedDelay")),
                    None => {}
                }
                if d.exponential_delay.is_some() {
                    cx.unsupported(&dp.f("exponentialDelay"), "exponentialDelay");
                }
                if let Some(pc) = &d.percentage {
                    pc.check(cx, &dp.f("percentage"));
                }
                if let Some(pc) = d.percent {
                    check_percentage(cx, &dp.f("percent"), f64::from(pc));
                }
            }
            if let Some(a) = &f.abort {
                let ap = fp.f("abort");
                let kinds = [
                    a.http_status.is_some(),
                    a.grpc_status.is_some(),
                    a.http2_error.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if kinds == 0 {
                    cx.error(&ap, "an abort needs httpStatus or grpcStatus");
                } else if kinds > 1 {
                    cx.error(
                        &ap,
                        "only one of httpStatus, grpcStatus or http2Error may be set",
                    );
                }
                if let Some(s) = a.http_status {
                    if !(200..=599).contains(&s) {
                        cx.error(
                            &ap.f("httpStatus"),
                            format!("HTTP status {s} is outside 200-599"),
                        );
                    }
                }
                if let Some(g) = &a.grpc_status {
                    if !GRPC_STATUS.contains(&g.as_str()) {
                        cx.error(
                            &ap.f("grpcStatus"),
                            format!("unknown gRPC status `{g}` (e.g. UNAVAILABLE, INTERNAL)"),
                        );
                    }
                }
                if a.http2_error.is_some() {
                    cx.unsupported(&ap.f("http2Error"), "http2Error");
                }
                if let Some(pc) = &a.percentage {
                    pc.check(cx, &ap.f("percentage"));
                }
            }
        }
        if let Some(m) = &self.mirror {
            check_destination(cx, &p.f("mirror"), m);
        }
        if self.mirror.is_none()
            && (self.mirror_percentage.is_some() || self.mirror_percent.is_some())
        {
            cx.error(&p.f("mirrorPercentage"), "mirrorPercentage needs mirror");
        }
        if let Some(pc) = &self.mirror_percentage {
            pc.check(cx, &p.f("mirrorPercentage"));
        }
        if let Some(pc) = self.mirror_percent {
            check_percentage(cx, &p.f("mirrorPercent"), f64::from(pc));
        }
        for (j, m) in self.mirrors.iter().enumerate() {
            let mp = p.f("mirrors").i(j);
            match &m.destination {
                Some(d) => check_destination(cx, &mp.f("destination"), d),
                None => cx.required(&mp.f("destination")),
            }
            if let Some(pc) = &m.percentage {
                pc.check(cx, &mp.f("percentage"));
            }
        }
        if self.mirror.is_some() && !self.mirrors.is_empty() {
            cx.error(&p.f("mirrors"), "only one of mirror or mirrors may be set");
        }
        if self.cors_policy.is_some() {
            cx.unsupported(&p.f("corsPolicy"), "corsPolicy");
        }
        if let Some(h) = &self.headers {
            check_header_ops(cx, &p.f("headers"), h);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

/// `DestinationRule`: policies for traffic to a service after routing, and its subsets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    /// The service host (required); short names resolve in the resource's namespace.
    pub host: String,
    /// Policies for all of the service's traffic.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets (versions) of the service's endpoints.
    pub subsets: Vec<Subset>,
    /// Namespaces that may use the rule.
    pub export_to: Vec<String>,
    /// Client workloads the rule applies to (unsupported).
    pub workload_selector: Option<WorkloadSelector>,
}

/// `TrafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits and timeouts (circuit breaking).
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// HTTP CONNECT tunnelling (unsupported).
    #[serde(deserialize_with = "null_as_default")]
    pub tunnel: Option<serde_yaml::Value>,
    /// PROXY protocol to the endpoints (unsupported).
    #[serde(deserialize_with = "null_as_default")]
    pub proxy_protocol: Option<serde_yaml::Value>,
    /// Retry budget (unsupported).
    #[serde(deserialize_with = "null_as_default")]
    pub retry_budget: Option<serde_yaml::Value>,
}

/// `TrafficPolicy.PortTrafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port (required).
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits and timeouts.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints.
    pub tls: Option<ClientTlsSettings>,
}

/// `LoadBalancerSettings`: `simple` or `consistentHash`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// A standard algorithm.
    pub simple: Option<SimpleLb>,
    /// Hash-based affinity.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality failover/distribution (unsupported).
    #[serde(deserialize_with = "null_as_default")]
    pub locality_lb_setting: Option<serde_yaml::Value>,
    /// Slow start window (unsupported).
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start (unsupported).
    #[serde(deserialize_with = "null_as_default")]
    pub warmup: Option<serde_yaml::Value>,
}

/// `LoadBalancerSettings.SimpleLB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Let the proxy choose (Halyard: power of two choices over latency).
    Unspecified,
    /// Deprecated name of `LEAST_REQUEST`.
    LeastConn,
    /// Random.
    Random,
    /// Original destination (unsupported).
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Fewest outstanding requests.
    LeastRequest,
}

/// `LoadBalancerSettings.ConsistentHashLB`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHashLb {
    /// Hash a request header.
    pub http_header_name: Option<String>,
    /// Hash a cookie (set if absent).
    pub http_cookie: Option<HttpCookie>,
    /// Hash the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash settings.
    pub ring_hash: Option<RingHash>,
    /// Maglev settings (unsupported).
    #[serde(deserialize_with = "null_as_default")]
    pub maglev: Option<serde_yaml::Value>,
    /// Deprecated ring size.
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.RingHash`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    /// Minimum ring size.
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.HTTPCookie`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCookie {
    /// Cookie name (required).
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Cookie lifetime.
    pub ttl: Option<Duration>,
    /// Extra cookie attributes (unsupported).
    pub attributes: Vec<serde_yaml::Value>,
}

/// `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    /// TCP-level settings.
    pub tcp: Option<TcpSettings>,
    /// HTTP-level settings.
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    /// Maximum connections to a host.
    pub max_connections: Option<i32>,
    /// Connect timeout.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive (unsupported).
    #[serde(deserialize_with = "null_as_default")]
    pub tcp_keepalive: Option<serde_yaml::Value>,
    /// Maximum lifetime of a connection.
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout of TCP connections.
    pub idle_timeout: Option<Duration>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    /// Maximum queued requests.
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum concurrent requests.
    pub http2_max_requests: Option<i32>,
    /// Requests per connection (1 disables keep-alive).
    pub max_requests_per_connection: Option<i32>,
    /// Maximum concurrent retries.
    pub max_retries: Option<i32>,
    /// Idle timeout of pooled connections.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 upgrade policy.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the client's protocol upstream.
    pub use_client_protocol: Option<bool>,
    /// Maximum concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: Option<i32>,
}

/// `HTTPSettings.H2UpgradePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The default.
    Default,
    /// Keep HTTP/1.1.
    DoNotUpgrade,
    /// Upgrade to HTTP/2.
    Upgrade,
}

/// `OutlierDetection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Separate local-origin failures (unsupported).
    pub split_external_local_origin_errors: Option<bool>,
    /// Local-origin failures before ejection (unsupported).
    pub consecutive_local_origin_failures: Option<u32>,
    /// 502/503/504 responses in a row before ejection.
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx responses in a row before ejection.
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated: use consecutive5xxErrors / consecutiveGatewayErrors.
    pub consecutive_errors: Option<i32>,
    /// Time between sweeps (at least 1ms).
    pub interval: Option<Duration>,
    /// Minimum ejection time (at least 1ms).
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of hosts ejected, 0-100.
    pub max_ejection_percent: Option<i32>,
    /// Outlier detection is off below this share of healthy hosts, 0-100.
    pub min_health_percent: Option<i32>,
}

/// `ClientTLSSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// TLS mode.
    pub mode: Option<TlsMode>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA file.
    pub ca_certificates: Option<String>,
    /// Secret name for the credentials.
    pub credential_name: Option<String>,
    /// SANs to verify.
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    pub sni: Option<String>,
    /// Skip verification.
    pub insecure_skip_verify: Option<bool>,
    /// CRL file.
    pub ca_crl: Option<String>,
}

/// `ClientTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plaintext.
    Disable,
    /// TLS originated by the proxy, verifying the server.
    Simple,
    /// TLS originated by the proxy with a client certificate from files.
    Mutual,
    /// mTLS with the mesh's own certificates.
    IstioMutual,
}

/// `Subset`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    /// Name (required), unique in the rule.
    pub name: String,
    /// Endpoint labels that select the subset.
    pub labels: BTreeMap<String, String>,
    /// Policies overriding the rule's for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

impl DestinationRule {
    pub(crate) fn check(&self, cx: &mut Cx<'_>) {
        let spec = FieldPath::root().f("spec");
        if self.host.is_empty() {
            cx.required(&spec.f("host"));
        } else {
            check_host(cx, &spec.f("host"), &self.host, false);
        }
        if let Some(tp) = &self.traffic_policy {
            check_traffic_policy(cx, &spec.f("trafficPolicy"), tp);
        }
        for (i, s) in self.subsets.iter().enumerate() {
            let p = spec.f("subsets").i(i);
            if s.name.is_empty() {
                cx.required(&p.f("name"));
            } else if !is_dns_label(&s.name) {
                cx.error(
                    &p.f("name"),
                    format!("invalid subset name `{}`: want a DNS-1123 label", s.name),
                );
            } else if self.subsets[..i].iter().any(|o| o.name == s.name) {
                cx.error(
                    &p.f("name"),
                    format!("subset `{}` is defined twice", s.name),
                );
            }
            check_labels(cx, &p.f("labels"), &s.labels);
            if let Some(tp) = &s.traffic_policy {
                check_traffic_policy(cx, &p.f("trafficPolicy"), tp);
            }
        }
        check_export_to(cx, &spec.f("exportTo"), &self.export_to);
        if self.workload_selector.is_some() {
            cx.unsupported(
                &spec.f("workloadSelector"),
                "DestinationRule workloadSelector",
            );
        }
    }
}

fn check_traffic_policy(cx: &mut Cx<'_>, p: &FieldPath, tp: &TrafficPolicy) {
    check_policy_parts(
        cx,
        p,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = p.f("portLevelSettings").i(i);
        match &pl.port {
            None => cx.required(&pp.f("port")),
            Some(port) => {
                check_port(cx, &pp.f("port").f("number"), port.number);
                let dup = tp.port_level_settings[..i]
                    .iter()
                    .any(|o| o.port.as_ref().is_some_and(|o| o.number == port.number));
                if dup {
                    cx.error(
                        &pp.f("port").f("number"),
                        format!("port {} has settings twice", port.number),
                    );
                }
            }
        }
        check_policy_parts(
            cx,
            &pp,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
    if tp.tunnel.is_some() {
        cx.unsupported(&p.f("tunnel"), "tunnel");
    }
    if tp.proxy_protocol.is_some() {
        cx.unsupported(&p.f("proxyProtocol"), "proxyProtocol");
    }
    if tp.retry_budget.is_some() {
        cx.unsupported(&p.f("retryBudget"), "retryBudget");
    }
}

fn check_policy_parts(
    cx: &mut Cx<'_>,
    p: &FieldPath,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        let lp = p.f("loadBalancer");
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            cx.error(&lp, "only one of simple or consistentHash may be set");
        }
        if lb.simple == Some(SimpleLb::Passthrough) {
            cx.unsupported(&lp.f("simple"), "load balancer PASSTHROUGH");
        }
        if let Some(ch) = &lb.consistent_hash {
            let cp = lp.f("consistentHash");
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip.is_some(),
                ch.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if keys == 0 {
                cx.error(
                    &cp,
                    "one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
                );
            } else if keys > 1 {
                cx.error(
                    &cp,
                    "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set",
                );
            }
            if let Some(h) = &ch.http_header_name {
                if !is_header_name(h) {
                    cx.error(
                        &cp.f("httpHeaderName"),
                        format!("invalid header name `{h}`"),
                    );
                }
            }
            if ch.use_source_ip == Some(false) {
                cx.error(
                    &cp.f("useSourceIp"),
                    "useSourceIp: false selects no hash key",
                );
            }
            if let Some(c) = &ch.http_cookie {
                let kp = cp.f("httpCookie");
                if c.name.is_empty() {
                    cx.required(&kp.f("name"));
                }
                match &c.ttl {
                    Some(ttl) => ttl.check(cx, &kp.f("ttl"), ZERO),
                    None => cx.required(&kp.f("ttl")),
                }
                if !c.attributes.is_empty() {
                    cx.unsupported(&kp.f("attributes"), "cookie attributes");
                }
            }
            if ch.maglev.is_some() {
                cx.unsupported(&cp.f("maglev"), "maglev (use ringHash)");
            }
            if ch.ring_hash.is_some() && ch.minimum_ring_size.is_some() {
                cx.error(
                    &cp.f("minimumRingSize"),
                    "only one of ringHash or minimumRingSize may be set",
                );
            }
        }
        if lb.locality_lb_setting.is_some() {
            cx.unsupported(&lp.f("localityLbSetting"), "localityLbSetting");
        }
        if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
            let f = if lb.warmup.is_some() {
                "warmup"
            } else {
                "warmupDurationSecs"
            };
            cx.unsupported(&lp.f(f), "slow start (warmup)");
        }
    }
    if let Some(pool) = pool {
        let pp = p.f("connectionPool");
        if let Some(t) = &pool.tcp {
            let tp = pp.f("tcp");
            if let Some(n) = t.max_connections {
                if n <= 0 {
                    cx.error(
                        &tp.f("maxConnections"),
                        format!("maxConnections {n} must be positive"),
                    );
                }
            }
            if let Some(d) = &t.connect_timeout {
                d.check(cx, &tp.f("connectTimeout"), MS);
            }
            if let Some(d) = &t.max_connection_duration {
                d.check(cx, &tp.f("maxConnectionDuration"), MS);
            }
            if let Some(d) = &t.idle_timeout {
                d.check(cx, &tp.f("idleTimeout"), ZERO);
            }
            if t.tcp_keepalive.is_some() {
                cx.unsupported(&tp.f("tcpKeepalive"), "tcpKeepalive");
            }
        }
        if let Some(h) = &pool.http {
            let hp = pp.f("http");
            for (field, v) in [
                ("http1MaxPendingRequests", h.http1_max_pending_requests),
                ("http2MaxRequests", h.http2_max_requests),
                ("maxRequestsPerConnection", h.max_requests_per_connection),
                ("maxRetries", h.max_retries),
                ("maxConcurrentStreams", h.max_concurrent_streams),
            ] {
                if let Some(n) = v {
                    if n < 0 {
                        cx.error(&hp.f(field), format!("{field} {n} must not be negative"));
                    }
                }
            }
            if let Some(d) = &h.idle_timeout {
                d.check(cx, &hp.f("idleTimeout"), MS);
            }
        }
    }
    if let Some(o) = outlier {
        let op = p.f("outlierDetection");
        if let Some(d) = &o.interval {
            d.check(cx, &op.f("interval"), MS);
        }
        if let Some(d) = &o.base_ejection_time {
            d.check(cx, &op.f("baseEjectionTime"), MS);
        }
        for (field, v) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if let Some(n) = v {
                check_percentage(cx, &op.f(field), f64::from(n));
            }
        }
        if let Some(n) = o.consecutive_errors {
            if n < 0 {
                cx.error(
                    &op.f("consecutiveErrors"),
                    format!("consecutiveErrors {n} must not be negative"),
                );
            }
        }
        if o.split_external_local_origin_errors == Some(true) {
            cx.unsupported(
                &op.f("splitExternalLocalOriginErrors"),
                "splitExternalLocalOriginErrors",
            );
        }
        if o.consecutive_local_origin_failures.is_some() {
            cx.unsupported(
                &op.f("consecutiveLocalOriginFailures"),
                "consecutiveLocalOriginFailures",
            );
        }
    }
    if let Some(tls) = tls {
        check_client_tls(cx, &p.f("tls"), tls);
    }
}

/// `tls` of a traffic policy: SIMPLE and MUTUAL originate TLS with certificate files (read
/// here, as the proxy will); ISTIO_MUTUAL and DISABLE take no other field.
fn check_client_tls(cx: &mut Cx<'_>, tp: &FieldPath, tls: &ClientTlsSettings) {
    let mode = match tls.mode {
        Some(m @ (TlsMode::Simple | TlsMode::Mutual)) => m,
        _ => return check_mesh_tls(cx, tp, tls),
    };
    if tls.credential_name.is_some() {
        cx.unsupported(
            &tp.f("credentialName"),
            "tls credentialName (Kubernetes secrets); use caCertificates, clientCertificate and privateKey files",
        );
    }
    if tls.ca_crl.is_some() {
        cx.unsupported(&tp.f("caCrl"), "tls caCrl");
    }
    if mode == TlsMode::Mutual {
        for (field, v) in [
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
        ] {
            if v.as_deref().is_none_or(str::is_empty) {
                cx.required(&tp.f(field));
            }
        }
    } else {
        for (field, v) in [
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
        ] {
            if v.is_some() {
                cx.warn(
                    &tp.f(field),
                    format!("{field} applies only to tls mode MUTUAL; it is ignored"),
                );
            }
        }
    }
    if let Some(sni) = &tls.sni {
        if sni.starts_with('*')
            || !(sni.parse::<std::net::IpAddr>().is_ok() || is_dns_subdomain(sni))
        {
            cx.error(
                &tp.f("sni"),
                format!("`{sni}` is not a DNS name or IP address"),
            );
        }
    }
    for (i, san) in tls.subject_alt_names.iter().enumerate() {
        let ok = match san.strip_prefix("spiffe://") {
            Some(_) => san.parse::<halyard_certs::SpiffeId>().is_ok(),
            None => san.parse::<std::net::IpAddr>().is_ok() || is_dns_subdomain(san),
        };
        if !ok {
            cx.error(
                &tp.f("subjectAltNames").i(i),
                format!("`{san}` is not a DNS name, IP address or spiffe:// URI"),
            );
        }
    }
    if tls.insecure_skip_verify == Some(true) {
        cx.warn(
            &tp.f("insecureSkipVerify"),
            "the server's certificate is not verified (no CA, name or subjectAltNames check)",
        );
    }
    check_pem(
        cx,
        &tp.f("caCertificates"),
        tls.ca_certificates.as_deref(),
        false,
    );
    if mode == TlsMode::Mutual {
        check_pem(
            cx,
            &tp.f("clientCertificate"),
            tls.client_certificate.as_deref(),
            false,
        );
        check_pem(cx, &tp.f("privateKey"), tls.private_key.as_deref(), true);
    }
}

/// A PEM file the proxies will read: it must exist and hold certificates (or a private key).
fn check_pem(cx: &mut Cx<'_>, path: &FieldPath, file: Option<&str>, key: bool) {
    use rustls::pki_types::pem::PemObject;
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return;
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return cx.error(path, format!("cannot read `{file}`: {e}")),
    };
    let usable = if key {
        rustls::pki_types::PrivateKeyDer::from_pem_slice(&bytes).is_ok()
    } else {
        rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|c| !c.is_empty())
    };
    if !usable {
        let what = if key {
            "a private key"
        } else {
            "PEM certificates"
        };
        cx.error(path, format!("`{file}` does not hold {what}"));
    }
}

/// `tls` with ISTIO_MUTUAL, DISABLE or no mode: only the mode may be set.
fn check_mesh_tls(cx: &mut Cx<'_>, tp: &FieldPath, tls: &ClientTlsSettings) {
    if tls.sni.is_some() {
        cx.unsupported(&tp.f("sni"), "tls sni (the SNI is the destination host)");
    }
    if !tls.subject_alt_names.is_empty() {
        cx.unsupported(
            &tp.f("subjectAltNames"),
            "tls subjectAltNames (endpoints are verified by their SPIFFE identity)",
        );
    }
    let extra = [
        ("clientCertificate", tls.client_certificate.is_some()),
        ("privateKey", tls.private_key.is_some()),
        ("caCertificates", tls.ca_certificates.is_some()),
        ("credentialName", tls.credential_name.is_some()),
        ("insecureSkipVerify", tls.insecure_skip_verify.is_some()),
        ("caCrl", tls.ca_crl.is_some()),
    ];
    for (field, set) in extra {
        if set {
            cx.error(
                &tp.f(field),
                format!("{field} applies only to tls modes SIMPLE and MUTUAL"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_coverage() {
        assert!(host_covers("*", "a.b"));
        assert!(host_covers("*.bookinfo.com", "login.bookinfo.com"));
        assert!(host_covers("*.bookinfo.com", "*.eu.bookinfo.com"));
        assert!(!host_covers("*.bookinfo.com", "bookinfo.com"));
        assert!(!host_covers("a.bookinfo.com", "b.bookinfo.com"));
    }

    #[test]
    fn camel_case_names_match_istio() {
        let od: OutlierDetection = serde_yaml::from_str(
            "consecutive5xxErrors: 7\nconsecutiveGatewayErrors: 3\nmaxEjectionPercent: 50\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(od.consecutive_5xx_errors, Some(7));
        let h: HttpSettings = serde_yaml::from_str(
            "http1MaxPendingRequests: 1\nhttp2MaxRequests: 2\nmaxRequestsPerConnection: 3\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.http2_max_requests, Some(2));
        let m: HttpMatchRequest =
            serde_yaml::from_str("ignoreUriCase: true\nqueryParams: {a: {exact: b}}\n")
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(m.ignore_uri_case);
    }
}
