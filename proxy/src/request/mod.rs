//! The context of one HTTP request as it is proxied: who it came from, what was decided and
//! done (the record the access log, metrics and span are written from) and the upstream
//! resources it holds until its response ends (in-flight slot, breaker slot, pooled
//! connection).

mod record;
pub mod report;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use halyard_filters::attrs::OwnedRequest;
use halyard_filters::filter::Notes;
use http::{HeaderValue, Method, Request, Uri, Version};

use crate::ctx::{ConnInfo, Flags};
use crate::io::body::{CutSignal, OnFinish};
use crate::io::reply::grpc_trailers;
use crate::shared::Shared;
use crate::snapshot::{LocalWorkload, Settings};
use crate::telemetry::access_log::LogFields;
use crate::telemetry::peer::WorkloadMeta;
use crate::telemetry::trace::ActiveSpan;
use crate::telemetry::tracers::TracerSlot;
use crate::upstream::{breaker, InFlight, PooledH1};
use crate::watched::Registration;

/// The upstream resources a request holds until its response ends.
#[derive(Default)]
pub struct Guards {
    /// Keeps the endpoint's in-flight count.
    pub in_flight: Option<InFlight>,
    /// The circuit-breaker slot.
    pub admitted: Option<breaker::Active>,
    /// HTTP/1 upstream connection to return to the pool once the body is done.
    pub pooled: Option<PooledH1>,
}

/// One HTTP request/response as it is being proxied; reports metrics and the access log when
/// the response body ends, and returns the upstream connection to its pool if it completed.
pub struct RequestCtx {
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
    /// What the request holds upstream until its response ends.
    pub guards: Guards,
    /// Why mutual TLS to the upstream failed, when it did.
    pub transport_failure: Option<&'static str>,
    /// What the filters noted: the verified JWT, the policy that denied the request.
    pub notes: Notes,
    /// Inbound: the request that opens a tunnel (CONNECT, upgrade), kept to decide the
    /// tunnel again when the policy changes.
    pub tunnel_request: Option<Box<OwnedRequest>>,
    /// Inbound: the request while a new policy may still end it (a gRPC call in flight).
    pub stream_watch: Option<Registration>,
    /// Upstream tries (1 + retries); 0 when nothing was sent upstream.
    pub attempts: u32,
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

impl RequestCtx {
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
            guards: Guards::default(),
            transport_failure: None,
            notes: Notes::default(),
            tunnel_request: None,
            stream_watch: None,
            attempts: 0,
            grpc: req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            grpc_status: None,
        }
    }
}

impl RequestCtx {
    /// Fires when the policy ends this request in flight (see [`Self::stream_watch`]).
    pub fn cut_signal(&self) -> Option<CutSignal> {
        let w = self.stream_watch.as_ref()?.watched();
        Some(Box::pin(w.closed().clone().cancelled_owned()))
    }
}

impl OnFinish for RequestCtx {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if self.grpc {
            if let Some(s) = grpc_status_of(trailers) {
                self.grpc_status = Some(s);
            }
        }
    }

    /// A gRPC call whose permission was revoked ends with the status a new call would get.
    fn cut(&mut self) -> Option<http::HeaderMap> {
        let why = self.stream_watch.as_ref()?.watched().why()?;
        let reply = why.reply();
        self.flags.set(reply.flags);
        if !self.grpc {
            return None;
        }
        let trailers = grpc_trailers(&reply);
        self.grpc_status = grpc_status_of(&trailers);
        Some(trailers)
    }

    fn finish(mut self, completed: bool, bytes_sent: u64) {
        if let Some(p) = self.guards.pooled.take() {
            if completed {
                p.release();
            }
        }
        if !completed && self.flags.is_empty() {
            self.flags.set(Flags::DC);
        }
        self.guards = Guards::default();
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
