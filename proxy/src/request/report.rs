//! What one finished request reports to the Istio metrics and the tracer.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use http::Version;

use super::RequestCtx;
use crate::ctx::ConnInfo;
use crate::ctx::ListenerKind;
use crate::routes::normalize_host;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::istio::{Reporter, RequestLabels, TcpConn, TcpLabels};
use crate::telemetry::peer::WorkloadMeta;
use crate::telemetry::trace::{ActiveSpan, AttrValue, SpanEnd, SpanKind};
use crate::telemetry::tracers::TracerSlot;
use crate::upstream::Upstream;

/// A peer nobody described.
fn unknown() -> &'static WorkloadMeta {
    static UNKNOWN: OnceLock<WorkloadMeta> = OnceLock::new();
    UNKNOWN.get_or_init(WorkloadMeta::unknown)
}

/// Who is on each side of an exchange, from the reporting proxy's point of view.
struct Sides<'a> {
    reporter: Reporter,
    source: &'a WorkloadMeta,
    source_principal: &'a str,
    destination: &'a WorkloadMeta,
    destination_principal: &'a str,
    service: &'a str,
}

impl<'a> Sides<'a> {
    /// Places this workload and its peer by listener: outbound reports as the source,
    /// inbound as the destination. `peer_principal` is the identity the peer proved; without
    /// one the connection was not mutual TLS and neither principal is known.
    fn new(
        listener: ListenerKind,
        local: &'a WorkloadMeta,
        own_principal: &'a str,
        peer: &'a WorkloadMeta,
        peer_principal: Option<&'a str>,
        service: &'a str,
    ) -> Self {
        let own = if peer_principal.is_some() {
            own_principal
        } else {
            ""
        };
        let peer_principal = peer_principal.unwrap_or("");
        match listener {
            ListenerKind::Outbound => Sides {
                reporter: Reporter::Source,
                source: local,
                source_principal: own,
                destination: peer,
                destination_principal: peer_principal,
                service,
            },
            ListenerKind::Inbound => Sides {
                reporter: Reporter::Destination,
                source: peer,
                source_principal: peer_principal,
                destination: local,
                destination_principal: own,
                service,
            },
        }
    }
}

/// Opens the Istio TCP metrics of a relayed connection to `up` (service `cluster`, whose
/// name may carry `|subset`). TCP has no metadata exchange: the peer workload is unknown and
/// only its verified identity is reported, as Istio does without its ALPN exchange.
pub(crate) fn tcp_conn(
    shared: &Shared,
    snap: &Snapshot,
    info: &ConnInfo,
    up: &Upstream,
    cluster: Option<&str>,
) -> TcpConn {
    let local = &snap.local.meta;
    let service = cluster.map_or("unknown", |c| c.split('|').next().unwrap_or(c));
    let peer_principal = match info.listener {
        ListenerKind::Outbound => up.identity.as_deref(),
        ListenerKind::Inbound => info.peer_cert.as_ref().map(|p| &*p.principal),
    };
    let own = shared.principal.as_deref().unwrap_or("");
    let sides = Sides::new(
        info.listener,
        local,
        own,
        unknown(),
        peer_principal,
        service,
    );
    shared.metrics.istio.tcp_open(&TcpLabels {
        reporter: sides.reporter,
        source: sides.source,
        source_principal: sides.source_principal,
        destination: sides.destination,
        destination_principal: sides.destination_principal,
        destination_service: service,
        response_flags: "-",
        mutual_tls: info.peer_cert.is_some(),
    })
}

impl RequestCtx {
    fn sides(&self) -> Sides<'_> {
        let (peer_principal, service) = match self.conn.listener {
            ListenerKind::Outbound => {
                let host = || {
                    self.authority
                        .as_ref()
                        .and_then(|a| a.to_str().ok())
                        .map(|a| normalize_host(a).0)
                        .filter(|h| !h.is_empty())
                        .unwrap_or("unknown")
                };
                let service = self.service.as_deref().or(self.cluster.as_deref());
                (
                    self.upstream_identity.as_deref(),
                    service.unwrap_or_else(host),
                )
            }
            ListenerKind::Inbound => (
                self.conn.peer_cert.as_ref().map(|p| &*p.principal),
                // A Host no service claims is the caller's text: not a label value.
                self.service.as_deref().unwrap_or("unknown"),
            ),
        };
        Sides::new(
            self.conn.listener,
            &self.local.meta,
            self.shared.principal.as_deref().unwrap_or(""),
            self.peer_meta.as_ref().unwrap_or(unknown()),
            peer_principal,
            service,
        )
    }

    /// Records the request in Istio's standard metrics.
    pub(crate) fn report(&self, bytes_sent: u64) {
        let sides = self.sides();
        let flags = self.flags.label();
        let labels = RequestLabels {
            reporter: sides.reporter,
            source: sides.source,
            source_principal: sides.source_principal,
            destination: sides.destination,
            destination_principal: sides.destination_principal,
            destination_service: sides.service,
            grpc: self.grpc,
            response_code: self.code,
            grpc_status: self.grpc_status,
            response_flags: &flags,
            mutual_tls: self.conn.peer_cert.is_some(),
        };
        let received = self
            .request_bytes
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed));
        self.shared.metrics.istio.record_request(
            &labels,
            self.start.elapsed(),
            received,
            bytes_sent,
        );
    }

    /// Ends the request's span with OpenTelemetry's HTTP attributes and the mesh's own.
    pub(crate) fn finish_span(&self, span: ActiveSpan, slot: &TracerSlot) {
        let Some(tracer) = &slot.tracer else { return };
        let sides = self.sides();
        let authority = self
            .authority
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .unwrap_or("");
        let port = self.service_port.or(normalize_host(authority).1);
        // Spans are not metric labels: an unresolved service is named by the request's host.
        let service = match (sides.service, normalize_host(authority).0) {
            ("unknown", host) if !host.is_empty() => host,
            (service, _) => service,
        };
        let name = match port {
            Some(p) => format!("{service}:{p}/*"),
            None => format!("{service}/*"),
        };
        let flags = self.flags.label();
        let request_id = text_of(self.request_id.as_ref());
        let user_agent = text_of(self.user_agent.as_ref());
        let protocol = match self.version {
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            _ => "1.1",
        };
        // Only a server span names its client.
        let peer_ip = (span.kind() == SpanKind::Server).then(|| self.conn.peer.ip().to_string());
        let mut attrs: Vec<(&'static str, AttrValue<'_>)> = vec![
            ("http.request.method", AttrValue::Str(self.method.as_str())),
            ("url.path", AttrValue::Str(self.uri.path())),
            ("url.scheme", AttrValue::Str("http")),
            (
                "server.address",
                AttrValue::Str(normalize_host(authority).0),
            ),
            ("network.protocol.version", AttrValue::Str(protocol)),
            ("user_agent.original", AttrValue::Str(user_agent)),
            ("guid:x-request-id", AttrValue::Str(request_id)),
            ("response_flags", AttrValue::Str(&flags)),
            (
                "istio.canonical_service",
                AttrValue::Str(self.local.meta.canonical_service()),
            ),
            (
                "istio.namespace",
                AttrValue::Str(self.local.meta.namespace()),
            ),
            ("source.principal", AttrValue::Str(sides.source_principal)),
            (
                "destination.principal",
                AttrValue::Str(sides.destination_principal),
            ),
            ("destination.service", AttrValue::Str(service)),
        ];
        if let Some(p) = port {
            attrs.push(("server.port", AttrValue::Int(i64::from(p))));
        }
        self.side_attributes(span.kind(), peer_ip.as_deref(), &mut attrs);
        span.finish(
            tracer,
            SpanEnd {
                name: &name,
                status_code: self.code,
                attributes: &attrs,
            },
        );
    }

    /// The attributes only one kind of span has: the client of a server span, the upstream
    /// of a client span; and the gRPC status.
    fn side_attributes<'a>(
        &'a self,
        kind: SpanKind,
        peer_ip: Option<&'a str>,
        attrs: &mut Vec<(&'static str, AttrValue<'a>)>,
    ) {
        match kind {
            SpanKind::Server => {
                if let Some(ip) = peer_ip {
                    attrs.push(("client.address", AttrValue::Str(ip)));
                }
            }
            SpanKind::Client => {
                if let Some(c) = &self.cluster {
                    attrs.push(("upstream_cluster", AttrValue::Str(c)));
                }
                if let Some(u) = &self.upstream {
                    attrs.push(("upstream_address", AttrValue::Str(u)));
                }
            }
        }
        if let Some(g) = self.grpc_status {
            attrs.push(("rpc.grpc.status_code", AttrValue::Int(i64::from(g))));
        }
    }
}

/// A header value as text; empty when absent or not text.
fn text_of(v: Option<&http::HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("")
}
