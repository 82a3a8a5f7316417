//! Distributed tracing: W3C and B3 propagation, spans, OTLP export.
