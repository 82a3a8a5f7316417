//! JSON access log lines on stdout, written by a dedicated thread so that a slow stdout never
//! blocks the runtime; when its bounded queue is full, lines are dropped and counted.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

use prometheus::IntCounter;

/// Lines queued at most before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Sends access-log lines to the writer thread.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: IntCounter,
}

/// The writer thread; joining it flushes what was queued.
pub struct AccessLogWriter(JoinHandle<()>);

impl AccessLog {
    /// Starts the writer thread.
    pub fn start(dropped: IntCounter) -> std::io::Result<(Self, AccessLogWriter)> {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                    // Drain what is already queued, then flush once.
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
                }
            })?;
        Ok((Self { tx, dropped }, AccessLogWriter(handle)))
    }

    /// Queues one line (without its newline).
    pub fn write(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

impl AccessLogWriter {
    /// Waits until every queued line is written (all senders must be gone).
    pub fn join(self) {
        let _ = self.0.join();
    }
}

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use halyard_xds::ACCESS_LOG_FIELDS;
use http::{HeaderValue, Method, Request, Uri, Version};
use serde_json::{json, Value};

use super::flags::Flags;
use super::ListenerKind;
use crate::http::body::OnFinish;
use crate::http::proxy::ConnInfo;
use crate::shared::Shared;
use crate::snapshot::{LocalWorkload, Settings};
use crate::telemetry::peer::WorkloadMeta;
use crate::telemetry::trace::ActiveSpan;
use crate::telemetry::tracers::TracerSlot;
use crate::upstream::{InFlight, PooledH1};

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn header_str(v: &Option<HeaderValue>) -> Value {
    match v.as_ref().and_then(|v| v.to_str().ok()) {
        Some(s) => Value::String(s.to_string()),
        None => Value::Null,
    }
}

/// One HTTP request/response as it is being proxied; reports metrics and the access log when
/// the response body ends, and returns the upstream connection to its pool if it completed.
pub struct Exchange {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Arc<ConnInfo>,
    log: Option<LogFields>,
    pub(crate) start_wall: SystemTime,
    pub(crate) start: Instant,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) authority: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
    /// Record Istio's standard metrics for this request.
    pub(crate) istio_metrics: bool,
    /// Who this proxy's workload is, as of the config the request started with.
    pub(crate) local: Arc<LocalWorkload>,
    /// The workload on the other side, from the metadata exchange (mesh peers only).
    pub peer_meta: Option<WorkloadMeta>,
    /// The span of this request, when it is sampled, with the tracer that finishes it (boxed:
    /// most requests have none, and the exchange moves with the response).
    pub span: Option<Box<(ActiveSpan, Arc<TracerSlot>)>>,
    /// The service port the request was routed by.
    pub service_port: Option<u16>,
    /// The service the request addressed (inbound: resolved from its authority).
    pub service: Option<Arc<str>>,
    /// Status code sent downstream.
    pub code: u16,
    /// Response flags.
    pub flags: Flags,
    /// `x-request-id` forwarded.
    pub request_id: Option<HeaderValue>,
    /// Endpoint used.
    pub upstream: Option<Arc<str>>,
    /// SPIFFE ID the endpoint proved (mutual TLS), when it did.
    pub upstream_identity: Option<Arc<str>>,
    /// Service used.
    pub cluster: Option<Arc<str>>,
    /// Route used.
    pub route: Option<Arc<str>>,
    /// Request body bytes read from downstream.
    pub request_bytes: Option<Arc<AtomicU64>>,
    /// Keeps the endpoint's in-flight count until the response ends.
    pub in_flight: Option<InFlight>,
    /// HTTP/1 upstream connection to return to the pool once the body is done.
    pub pooled: Option<PooledH1>,
    /// Why mutual TLS to the upstream failed, when it did.
    pub transport_failure: Option<&'static str>,
    /// The authorization policy that denied the request, when one did.
    pub denied_by: Option<Box<str>>,
    /// The verified JWT principal (`iss/sub`), when the request carried a token.
    pub request_principal: Option<Box<str>>,
    /// Upstream tries (1 + retries); 0 when nothing was sent upstream.
    pub attempts: u32,
    /// The circuit-breaker slot, held until the response ends.
    pub admitted: Option<crate::upstream::breaker::Active>,
    /// The request is gRPC (`content-type: application/grpc...`).
    pub grpc: bool,
    /// `grpc-status` of the response (headers or trailers).
    pub grpc_status: Option<u32>,
}

/// `grpc-status` as a number, when present and numeric.
pub fn grpc_status_of(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Exchange {
    /// Starts recording a request.
    pub fn start<B>(
        shared: &Arc<Shared>,
        conn: &Arc<ConnInfo>,
        req: &Request<B>,
        settings: &Settings,
        local: &Arc<LocalWorkload>,
    ) -> Self {
        conn.request_started();
        let authority = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| req.headers().get(http::header::HOST).cloned());
        Self {
            shared: shared.clone(),
            conn: conn.clone(),
            log: settings.access_log.clone(),
            istio_metrics: settings.istio_metrics,
            start_wall: SystemTime::now(),
            start: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            authority,
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            forwarded_for: req.headers().get("x-forwarded-for").cloned(),
            local: local.clone(),
            peer_meta: None,
            span: None,
            service: None,
            service_port: None,
            code: 0,
            flags: Flags::default(),
            request_id: None,
            upstream: None,
            upstream_identity: None,
            cluster: None,
            route: None,
            request_bytes: None,
            in_flight: None,
            pooled: None,
            transport_failure: None,
            denied_by: None,
            request_principal: None,
            attempts: 0,
            admitted: None,
            grpc: req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            grpc_status: None,
        }
    }

    /// Logs `uri` instead of the one received: authentication took a token out of the query,
    /// and bearer tokens must not reach the logs.
    pub fn redact_uri(&mut self, uri: &Uri) {
        self.uri = uri.clone();
    }

    /// The value of one access-log field (indices of [`ACCESS_LOG_FIELDS`]).
    fn field(&self, name: &str, bytes_sent: u64) -> Value {
        let s = |v: Option<&str>| v.map_or(Value::Null, |v| Value::String(v.to_string()));
        match name {
            "start_time" => rfc3339(self.start_wall).into(),
            "listener" => self.conn.listener.as_str().into(),
            "route_name" => s(self.route.as_deref()),
            "method" => self.method.as_str().into(),
            "path" => self
                .uri
                .path_and_query()
                .map_or_else(|| self.uri.to_string(), |p| p.to_string())
                .into(),
            "protocol" => protocol_name(self.version).into(),
            "response_code" => self.code.into(),
            "response_flags" => self.flags.to_string().into(),
            "upstream_transport_failure_reason" => s(self.transport_failure),
            "bytes_received" => self
                .request_bytes
                .as_ref()
                .map_or(0, |c| c.load(Ordering::Relaxed))
                .into(),
            "bytes_sent" => bytes_sent.into(),
            "duration" => (self.start.elapsed().as_millis() as u64).into(),
            "upstream_request_attempt_count" => self.attempts.into(),
            "x_forwarded_for" => header_str(&self.forwarded_for),
            "user_agent" => header_str(&self.user_agent),
            "request_id" => header_str(&self.request_id),
            "authority" => header_str(&self.authority),
            "upstream_host" => s(self.upstream.as_deref()),
            "upstream_cluster" => s(self.cluster.as_deref()),
            "downstream_local_address" => self
                .conn
                .local
                .map_or(Value::Null, |a| a.to_string().into()),
            "downstream_remote_address" => self.conn.peer.to_string().into(),
            "requested_server_name" => s(self.conn.sni.as_deref()),
            "downstream_peer_uri_san" => s(self
                .conn
                .peer_cert
                .as_ref()
                .map(|p| p.identity.to_string())
                .as_deref()),
            "upstream_peer_uri_san" => s(self.upstream_identity.as_deref()),
            "request_principal" => s(self.request_principal.as_deref()),
            "rbac_policy" => s(self.denied_by.as_deref()),
            "trace_id" => self
                .span
                .as_ref()
                .map_or(Value::Null, |s| s.0.trace_id_hex().into()),
            _ => Value::Null,
        }
    }

    fn line(&self, fields: &LogFields, bytes_sent: u64) -> String {
        fields.render(|name| Some(self.field(name, bytes_sent)))
    }
}

/// Which access-log fields are written, in order.
#[derive(Debug, Clone)]
pub struct LogFields(Arc<[u8]>);

impl LogFields {
    /// Every field, in the order of [`ACCESS_LOG_FIELDS`].
    pub fn all() -> Self {
        Self((0..ACCESS_LOG_FIELDS.len() as u8).collect())
    }

    /// The named fields in the given order; an empty list means all. Unknown names (already
    /// refused by validation) are skipped.
    pub fn from_names(names: &[String]) -> Self {
        if names.is_empty() {
            return Self::all();
        }
        Self(
            names
                .iter()
                .filter_map(|n| ACCESS_LOG_FIELDS.iter().position(|f| f == n))
                .map(|i| i as u8)
                .collect(),
        )
    }

    /// Renders one JSON object with the fields `value` knows (`None`: not applicable here).
    pub fn render(&self, value: impl Fn(&str) -> Option<Value>) -> String {
        let mut out = String::with_capacity(512);
        out.push('{');
        for &i in self.0.iter() {
            let Some(name) = ACCESS_LOG_FIELDS.get(i as usize) else {
                continue;
            };
            let Some(v) = value(name) else { continue };
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
            out.push_str(&v.to_string());
        }
        out.push('}');
        out
    }
}

impl OnFinish for Exchange {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if self.grpc {
            if let Some(s) = grpc_status_of(trailers) {
                self.grpc_status = Some(s);
            }
        }
    }

    fn finish(mut self, completed: bool, bytes_sent: u64) {
        if let Some(p) = self.pooled.take() {
            if completed {
                p.release();
            }
        }
        if !completed && self.flags.is_empty() {
            self.flags.set(Flags::DC);
        }
        self.in_flight = None;
        self.admitted = None;
        self.conn.request_ended();
        self.shared
            .metrics
            .listener(self.conn.listener)
            .request(self.code);
        if self.istio_metrics {
            self.report(bytes_sent);
        }
        if let (Some(fields), Some(log)) = (&self.log, &self.shared.access_log) {
            log.write(self.line(fields, bytes_sent));
        }
        if let Some(sampled) = self.span.take() {
            let (span, slot) = *sampled;
            self.finish_span(span, &slot);
        }
    }
}

/// Fields of one opaque TCP connection's log line.
pub struct TcpRecord<'a> {
    /// Listener.
    pub listener: ListenerKind,
    /// When it was accepted.
    pub start_wall: SystemTime,
    /// Duration.
    pub duration: std::time::Duration,
    /// Client.
    pub peer: SocketAddr,
    /// Endpoint.
    pub upstream: Option<&'a str>,
    /// Service.
    pub cluster: Option<&'a str>,
    /// Bytes from client.
    pub received: u64,
    /// Bytes to client.
    pub sent: u64,
    /// Flags.
    pub flags: Flags,
}

impl TcpRecord<'_> {
    /// The JSON line with the configured fields that apply to a TCP connection.
    pub fn line(&self, fields: &LogFields) -> String {
        fields.render(|name| {
            Some(match name {
                "start_time" => rfc3339(self.start_wall).into(),
                "listener" => self.listener.as_str().into(),
                "protocol" => "TCP".into(),
                "response_flags" => self.flags.to_string().into(),
                "bytes_received" => self.received.into(),
                "bytes_sent" => self.sent.into(),
                "duration" => (self.duration.as_millis() as u64).into(),
                "upstream_host" => json!(self.upstream),
                "upstream_cluster" => json!(self.cluster),
                "downstream_remote_address" => self.peer.to_string().into(),
                _ => return None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_064_800_123);
        assert_eq!(rfc3339(t), "2025-11-25T10:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
