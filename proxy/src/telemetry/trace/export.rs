//! The exporter task: batches finished spans and sends them to an OTLP collector over
//! gRPC (tonic) or HTTP/protobuf (a hyper http1 connection kept alive between exports).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as OtlpSpanKind;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, MissedTickBehavior};
use tonic::transport::Channel;

use super::config::{Endpoint, OtlpProtocol, TraceConfig, TraceError, TraceMetrics};
use super::span::{FinishedSpan, OwnedAttr, SpanKind};
use super::{EXPORT_TIMEOUT, MAX_EXPORT_BATCH};

/// Instrumentation scope of every span we export.
const SCOPE_NAME: &str = "halyard-proxy";
/// Largest collector response body we read (it is normally empty).
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// OTLP span flags: the parent's is-remote bit is known / the parent is remote.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;
/// W3C sampled flag; only sampled spans are exported.
const FLAG_SAMPLED: u32 = 0x01;

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("building request: {0}")]
    Request(#[from] http::Error),
    #[error("collector answered {0}")]
    Status(StatusCode),
    #[error("grpc: {0}")]
    Grpc(#[from] tonic::Status),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Sends batches to the collector.
pub(super) struct Exporter {
    transport: Transport,
    resource: Resource,
    scope: InstrumentationScope,
    /// Whether the last export failed, so a dead collector is logged once, not every second.
    failing: bool,
}

enum Transport {
    Http(HttpTransport),
    // Boxed: a tonic Endpoint is several hundred bytes.
    Grpc(Box<GrpcTransport>),
}

impl Exporter {
    /// Prepares the transport; nothing connects until the first export.
    pub fn new(cfg: &TraceConfig, endpoint: Endpoint) -> Result<Self, TraceError> {
        let transport = match cfg.protocol {
            OtlpProtocol::Http => Transport::Http(HttpTransport {
                host_header: HeaderValue::from_str(endpoint.authority.as_str()).map_err(|_| {
                    TraceError::Endpoint {
                        endpoint: cfg.endpoint.clone(),
                        reason: "invalid host",
                    }
                })?,
                endpoint,
                conn: None,
            }),
            OtlpProtocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|_| TraceError::Endpoint {
                        endpoint: cfg.endpoint.clone(),
                        reason: "not a valid gRPC endpoint",
                    })?
                    .connect_timeout(EXPORT_TIMEOUT)
                    .timeout(EXPORT_TIMEOUT);
                Transport::Grpc(Box::new(GrpcTransport {
                    endpoint: channel,
                    client: None,
                }))
            }
        };
        let mut attributes = vec![kv_str("service.name", &cfg.service_name)];
        for (k, v) in &cfg.resource {
            // service.name and the SDK name are ours; duplicates would confuse backends.
            if k != "service.name" && k != "telemetry.sdk.name" {
                attributes.push(kv_str(k, v));
            }
        }
        attributes.push(kv_str("telemetry.sdk.name", "halyard"));
        Ok(Self {
            transport,
            resource: Resource {
                attributes,
                ..Resource::default()
            },
            scope: InstrumentationScope {
                name: SCOPE_NAME.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..InstrumentationScope::default()
            },
            failing: false,
        })
    }

    /// Exports one batch and counts the outcome; failures drop the batch.
    async fn export(&mut self, batch: Vec<FinishedSpan>, metrics: &TraceMetrics) {
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans: batch.into_iter().map(to_otlp).collect(),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        let sent = match &mut self.transport {
            Transport::Http(t) => timeout(EXPORT_TIMEOUT, t.send(request)).await,
            Transport::Grpc(t) => timeout(EXPORT_TIMEOUT, t.send(request)).await,
        };
        match sent.unwrap_or(Err(ExportError::Timeout(EXPORT_TIMEOUT))) {
            Ok(response) => {
                let rejected = response
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    .min(count);
                if rejected > 0 {
                    tracing::debug!(rejected, "OTLP collector rejected some spans");
                }
                metrics.exports_ok.inc();
                metrics.spans_exported.inc_by(count - rejected);
                metrics.dropped_export_failed.inc_by(rejected);
                self.failing = false;
            }
            Err(error) => {
                metrics.exports_error.inc();
                metrics.dropped_export_failed.inc_by(count);
                if self.failing {
                    tracing::debug!(%error, spans = count, "trace export failed");
                } else {
                    tracing::warn!(%error, spans = count, "trace export failed; dropping spans");
                }
                self.failing = true;
            }
        }
    }
}

/// What woke the exporter loop.
enum Event {
    Received(usize),
    Tick,
}

/// The exporter future: collects spans until a batch is full or the flush interval passes,
/// and flushes the rest once every sender is gone.
pub(super) async fn run(
    mut rx: mpsc::Receiver<FinishedSpan>,
    mut exporter: Exporter,
    flush_interval: Duration,
    metrics: Arc<TraceMetrics>,
) {
    let mut batch = Vec::with_capacity(MAX_EXPORT_BATCH);
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let room = MAX_EXPORT_BATCH - batch.len();
        let event = tokio::select! {
            n = rx.recv_many(&mut batch, room) => Event::Received(n),
            _ = tick.tick() => Event::Tick,
        };
        let closed = matches!(event, Event::Received(0));
        let full = batch.len() >= MAX_EXPORT_BATCH;
        if !batch.is_empty() && (closed || full || matches!(event, Event::Tick)) {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_EXPORT_BATCH));
            exporter.export(spans, &metrics).await;
        }
        if closed {
            return;
        }
    }
}

/// OTLP/HTTP over one kept-alive http1 connection.
struct HttpTransport {
    endpoint: Endpoint,
    host_header: HeaderValue,
    conn: Option<http1::SendRequest<Full<Bytes>>>,
}

impl HttpTransport {
    async fn send(
        &mut self,
        request: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        let body = Bytes::from(request.encode_to_vec());
        // The connection is taken out so that a timed-out export leaves none behind.
        if let Some(conn) = self.conn.take().filter(|c| !c.is_closed()) {
            match self.exchange(conn, body.clone()).await {
                // The collector may have closed the idle connection as we sent; try a new one.
                Err(ExportError::Http(e)) if e.is_canceled() || e.is_closed() => {}
                Err(ExportError::Http(e)) if e.is_incomplete_message() => {}
                other => return other,
            }
        }
        let conn = self.connect().await?;
        self.exchange(conn, body).await
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, ExportError> {
        let addr = (self.endpoint.host.as_str(), self.endpoint.port);
        let stream = timeout(EXPORT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ExportError::Timeout(EXPORT_TIMEOUT))?
            .map_err(ExportError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "OTLP/HTTP connection ended");
            }
        });
        Ok(sender)
    }

    async fn exchange(
        &mut self,
        mut conn: http1::SendRequest<Full<Bytes>>,
        body: Bytes,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        conn.ready().await?;
        let request = Request::post(self.endpoint.path.as_str())
            .header(HOST, self.host_header.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))?;
        let response = conn.send_request(request).await?;
        let status = response.status();
        // The body is read even on errors so that the connection can be reused.
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes());
        if !status.is_success() {
            return Err(ExportError::Status(status));
        }
        // After a 2xx the collector has the batch; an unreadable body only costs the connection.
        let Ok(body) = body else {
            return Ok(ExportTraceServiceResponse::default());
        };
        self.conn = Some(conn);
        // A body we cannot decode still means the collector took the batch.
        Ok(ExportTraceServiceResponse::decode(body).unwrap_or_default())
    }
}

/// OTLP/gRPC on a lazily connected tonic channel.
struct GrpcTransport {
    endpoint: tonic::transport::Endpoint,
    client: Option<TraceServiceClient<Channel>>,
}

impl GrpcTransport {
    async fn send(
        &mut self,
        request: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        // Created here, not in Tracer::new, because the channel needs a running runtime.
        let endpoint = &self.endpoint;
        let client = self
            .client
            .get_or_insert_with(|| TraceServiceClient::new(endpoint.connect_lazy()));
        Ok(client.export(request).await?.into_inner())
    }
}

/// OTel HTTP semantic conventions: servers fail on 5xx, clients on 4xx and 5xx; no response
/// (0) or a code outside 1xx..5xx is a failure for both.
fn span_status(kind: SpanKind, code: u16) -> status::StatusCode {
    let error_from = match kind {
        SpanKind::Server => 500,
        SpanKind::Client => 400,
    };
    if code < 100 || code >= error_from {
        status::StatusCode::Error
    } else {
        status::StatusCode::Unset
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn to_otlp(span: FinishedSpan) -> Span {
    const STATUS_ATTR: &str = "http.response.status_code";
    let mut attributes = Vec::with_capacity(span.attributes.len() + 1);
    if span.status_code != 0 {
        attributes.push(kv(
            STATUS_ATTR,
            any_value::Value::IntValue(span.status_code.into()),
        ));
    }
    for (key, value) in span.attributes {
        if key == STATUS_ATTR && span.status_code != 0 {
            continue;
        }
        let value = match value {
            OwnedAttr::Str(s) => any_value::Value::StringValue(s),
            OwnedAttr::Int(i) => any_value::Value::IntValue(i),
            OwnedAttr::Bool(b) => any_value::Value::BoolValue(b),
        };
        attributes.push(kv(key, value));
    }
    let (parent_span_id, flags) = match span.parent_span_id {
        0 => (Vec::new(), FLAG_SAMPLED | FLAG_HAS_IS_REMOTE),
        id => (
            id.to_be_bytes().to_vec(),
            FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE,
        ),
    };
    let start = unix_nanos(span.start);
    Span {
        trace_id: span.trace_id.to_be_bytes().to_vec(),
        span_id: span.span_id.to_be_bytes().to_vec(),
        trace_state: span
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        parent_span_id,
        flags,
        name: span.name,
        kind: match span.kind {
            SpanKind::Server => OtlpSpanKind::Server,
            SpanKind::Client => OtlpSpanKind::Client,
        } as i32,
        start_time_unix_nano: start,
        // A clock step backwards must not produce a negative duration.
        end_time_unix_nano: unix_nanos(span.end).max(start),
        attributes,
        status: Some(Status {
            code: span_status(span.kind, span.status_code) as i32,
            message: String::new(),
        }),
        ..Span::default()
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        use status::StatusCode::{Error, Unset};
        for (kind, code, want) in [
            (SpanKind::Server, 200, Unset),
            (SpanKind::Server, 404, Unset),
            (SpanKind::Server, 499, Unset),
            (SpanKind::Server, 500, Error),
            (SpanKind::Server, 503, Error),
            (SpanKind::Server, 0, Error),
            (SpanKind::Client, 302, Unset),
            (SpanKind::Client, 400, Error),
            (SpanKind::Client, 404, Error),
            (SpanKind::Client, 503, Error),
            (SpanKind::Client, 0, Error),
            (SpanKind::Server, 600, Error),
        ] {
            assert_eq!(span_status(kind, code), want, "{kind:?} {code}");
        }
    }
}
