//! Distributed tracing: W3C and B3 propagation, spans, OTLP export.
//!
//! [`Tracer::begin`] reads the caller's context from the request headers, decides sampling
//! and rewrites the propagation headers for the next hop; [`ActiveSpan::finish`] queues the
//! finished span without blocking; the exporter future returned by [`Tracer::new`] batches
//! queued spans and sends them to an OTLP collector over gRPC or HTTP/protobuf.

mod config;
mod context;
mod export;
mod otlp;
mod queue;
mod span;

#[cfg(test)]
mod tests_context;
#[cfg(test)]
mod tests_export;
#[cfg(test)]
mod tests_failures;

pub use config::{OtlpProtocol, TraceConfig, TraceError, TraceMetrics, DEFAULT_FLUSH_INTERVAL};
pub use span::{begin, ActiveSpan, AttrValue, SpanEnd, SpanKind, Tracer};

/// Most spans sent in one export request.
pub const MAX_EXPORT_BATCH: usize = 512;
/// Finished spans waiting for export; beyond this `finish` drops the span.
pub const QUEUE_CAPACITY: usize = 4096;
/// Bound on one export (connect + request + response) and on connecting.
pub const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
