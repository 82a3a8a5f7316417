//! The exporter task: batches finished spans and sends them to an OTLP collector over
//! gRPC (tonic) or HTTP/protobuf (a hyper http1 connection kept alive between exports).

use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::net::TcpStream;
use tokio::time::{timeout, MissedTickBehavior};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic_prost::ProstDecoder;

use super::config::{Endpoint, OtlpProtocol, TraceConfig, TraceError, TraceMetrics};
use super::otlp;
use super::queue::SpanReceiver;
use super::span::EncodedSpan;
use super::{EXPORT_TIMEOUT, MAX_EXPORT_BATCH};

/// Instrumentation scope of every span we export.
const SCOPE_NAME: &str = "halyard-proxy";
/// Largest collector response body we read (it is normally empty).
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// The OTLP/gRPC export method.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

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
    /// Encoded `Resource` and `InstrumentationScope`, the same in every request.
    resource: Vec<u8>,
    scope: Vec<u8>,
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
        let mut attributes = vec![("service.name", cfg.service_name.as_str())];
        for (k, v) in &cfg.resource {
            // service.name and the SDK name are ours; duplicates would confuse backends.
            if k != "service.name" && k != "telemetry.sdk.name" {
                attributes.push((k, v));
            }
        }
        attributes.push(("telemetry.sdk.name", "halyard"));
        Ok(Self {
            transport,
            resource: otlp::encode_resource(&attributes),
            scope: otlp::encode_scope(SCOPE_NAME, env!("CARGO_PKG_VERSION")),
            failing: false,
        })
    }

    /// Exports one batch and counts the outcome; failures drop the batch.
    async fn export(&mut self, batch: &[EncodedSpan], metrics: &TraceMetrics) {
        let count = batch.len() as u64;
        let request = Bytes::from(otlp::encode_request(&self.resource, &self.scope, batch));
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

/// The exporter future: wakes when a batch is full or the flush interval passes, sends
/// everything queued in batches of at most `MAX_EXPORT_BATCH`, and ends after sending the
/// rest once the tracer is gone.
pub(super) async fn run(
    mut rx: SpanReceiver,
    mut exporter: Exporter,
    flush_interval: Duration,
    metrics: Arc<TraceMetrics>,
) {
    let mut batch = Vec::with_capacity(MAX_EXPORT_BATCH);
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = rx.batch_ready() => {}
            _ = tick.tick() => {}
        }
        // Read before draining: once the tracer is gone, the queue holds all that will come.
        let last = rx.sender_gone();
        while rx.drain(&mut batch) > 0 {
            exporter.export(&batch, &metrics).await;
            batch.clear();
        }
        if last {
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
    async fn send(&mut self, body: Bytes) -> Result<ExportTraceServiceResponse, ExportError> {
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
    client: Option<tonic::client::Grpc<Channel>>,
}

impl GrpcTransport {
    async fn send(&mut self, body: Bytes) -> Result<ExportTraceServiceResponse, ExportError> {
        // Created here, not in Tracer::new, because the channel needs a running runtime.
        let endpoint = &self.endpoint;
        let client = self
            .client
            .get_or_insert_with(|| tonic::client::Grpc::new(endpoint.connect_lazy()));
        client
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH);
        let response = client
            .unary(tonic::Request::new(body), path, EncodedCodec)
            .await?;
        Ok(response.into_inner())
    }
}

/// Sends an already encoded `ExportTraceServiceRequest` and decodes the response with
/// opentelemetry-proto.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedCodec;
    type Decoder = ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put(item);
        Ok(())
    }
}
