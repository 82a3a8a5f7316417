//! The tracer handle, spans in progress, and the finished spans queued for export.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};

use super::config::{Endpoint, TraceConfig, TraceError, TraceMetrics};
use super::queue::{self, PushError, SpanSender};
use super::{context, export, otlp};

/// Which side of a request the proxy's span describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy received the request (inbound, gateway).
    Server,
    /// The proxy sent the request on (outbound).
    Client,
}

/// A span attribute value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// String attribute.
    Str(&'a str),
    /// Integer attribute.
    Int(i64),
    /// Boolean attribute.
    Bool(bool),
}

/// How a span ended.
#[derive(Clone, Copy, Debug)]
pub struct SpanEnd<'a> {
    /// Span name, e.g. `backend.default.svc.cluster.local:8080/*`.
    pub name: &'a str,
    /// HTTP status sent downstream (0 when none was sent).
    pub status_code: u16,
    /// Extra attributes; `http.response.status_code` is added from `status_code`.
    pub attributes: &'a [(&'static str, AttrValue<'a>)],
}

/// Cheap to clone; sends finished spans to the exporter.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

struct Inner {
    queue: SpanSender,
    metrics: Arc<TraceMetrics>,
    sampling_percent: f64,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer")
            .field("sampling_percent", &self.inner.sampling_percent)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Returns the tracer and the exporter future, which the caller spawns. The future batches
    /// spans (up to 512 per export, or every `flush_interval`), exports each batch with a 5 s
    /// timeout, and ends after flushing what is queued once every `Tracer` clone is dropped.
    pub fn new(
        cfg: TraceConfig,
        metrics: Arc<TraceMetrics>,
    ) -> Result<(Tracer, impl Future<Output = ()> + Send + 'static), TraceError> {
        cfg.validate()?;
        let endpoint = Endpoint::parse(&cfg.endpoint, cfg.protocol)?;
        let exporter = export::Exporter::new(&cfg, endpoint)?;
        let (queue, rx) = queue::channel();
        let tracer = Tracer {
            inner: Arc::new(Inner {
                queue,
                metrics: Arc::clone(&metrics),
                sampling_percent: cfg.sampling_percent,
            }),
        };
        Ok((
            tracer,
            export::run(rx, exporter, cfg.flush_interval, metrics),
        ))
    }

    /// Starts the proxy's span for a request under this tracer's sampling (see [`begin`]).
    pub fn begin(&self, kind: SpanKind, headers: &mut HeaderMap) -> Option<ActiveSpan> {
        begin(self.inner.sampling_percent, kind, headers)
    }

    /// The configured sampling percentage for requests without a decision.
    pub fn sampling_percent(&self) -> f64 {
        self.inner.sampling_percent
    }
}

/// Starts the proxy's span for a request: extracts the caller's context (W3C, else B3
/// single, else B3 multi), decides sampling, and rewrites the propagation headers so the
/// next hop sees the new span as its parent (a W3C context the caller chose not to sample is
/// left as it is); `sampling_percent` decides for requests that carry no decision. Returns
/// `Some` only when sampled; needs no tracer, so that an unsampled request touches nothing
/// shared.
pub fn begin(sampling_percent: f64, kind: SpanKind, headers: &mut HeaderMap) -> Option<ActiveSpan> {
    let incoming = context::extract(headers);
    if incoming.w3c && incoming.sampled == Some(false) && incoming.b3.is_none() {
        // A caller's decision not to sample travels on as it came: no span of ours will exist
        // to be the next hop's parent, and W3C lets a participant that records nothing pass
        // `traceparent` unchanged. (With B3 beside it, both are rewritten to agree.)
        return None;
    }
    let sampled = incoming.sampled.unwrap_or_else(|| draw(sampling_percent));
    let trace_id = match incoming.trace_id {
        0 => nonzero(fastrand::u128),
        id => id,
    };
    let span_id = nonzero(fastrand::u64);
    context::inject(headers, &incoming, trace_id, span_id, sampled);
    if !sampled {
        return None;
    }
    Some(ActiveSpan {
        trace_id,
        span_id,
        parent_span_id: incoming.span_id,
        tracestate: if incoming.w3c {
            context::tracestate(headers)
        } else {
            None
        },
        kind,
        start: SystemTime::now(),
    })
}

/// A random id other than 0 (0 means "none"); drawing over the whole range and retrying on
/// 0 avoids the 128-bit division a range draw costs.
fn nonzero<T: PartialEq + Default>(draw: impl Fn(std::ops::RangeFull) -> T) -> T {
    loop {
        let v = draw(..);
        if v != T::default() {
            return v;
        }
    }
}

/// Random sampling draw; exact at 0 and 100.
fn draw(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

/// A sampled span in progress.
#[derive(Debug)]
pub struct ActiveSpan {
    trace_id: u128,
    span_id: u64,
    parent_span_id: u64,
    tracestate: Option<HeaderValue>,
    kind: SpanKind,
    start: SystemTime,
}

impl ActiveSpan {
    /// Ends the span and queues it for export without blocking; a full queue drops the span
    /// and counts the drop.
    pub fn finish(self, tracer: &Tracer, end: SpanEnd<'_>) {
        let span = EncodedSpan(otlp::encode_span(&otlp::SpanFields {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            tracestate: self.tracestate.as_ref(),
            kind: self.kind,
            start: self.start,
            end: SystemTime::now(),
            name: end.name,
            status_code: end.status_code,
            attributes: end.attributes,
        }));
        let metrics = &tracer.inner.metrics;
        match tracer.inner.queue.push(span) {
            Ok(()) => {}
            Err(PushError::Full) => metrics.dropped_queue_full.inc(),
            Err(PushError::Closed) => metrics.dropped_exporter_closed.inc(),
        }
    }

    /// Trace id as 32 lower-case hex digits (64-bit B3 ids left-padded).
    pub fn trace_id_hex(&self) -> String {
        context::trace_id_hex(self.trace_id)
    }

    /// Span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        context::span_id_hex(self.span_id)
    }

    /// The caller's span id as 16 hex digits; `None` for a root span.
    pub fn parent_span_id_hex(&self) -> Option<String> {
        (self.parent_span_id != 0).then(|| context::span_id_hex(self.parent_span_id))
    }

    /// The caller's `tracestate`, passed on unchanged.
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.tracestate.as_ref()
    }

    /// Server or client span.
    pub fn kind(&self) -> SpanKind {
        self.kind
    }

    /// When the span started.
    pub fn start(&self) -> SystemTime {
        self.start
    }
}

/// A finished span waiting in the queue, already in OTLP wire format (one allocation, no
/// message structs on the request path).
#[derive(Debug)]
pub(super) struct EncodedSpan(pub Vec<u8>);

impl AsRef<[u8]> for EncodedSpan {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
