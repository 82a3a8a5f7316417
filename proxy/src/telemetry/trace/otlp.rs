//! OTLP trace messages written straight to protobuf wire format from our spans: a finished
//! span becomes the bytes of one `opentelemetry.proto.trace.v1.Span`, and a batch of them is
//! wrapped into an `ExportTraceServiceRequest`. Building opentelemetry-proto's structs instead
//! costs an allocation per attribute key and value; the tests decode what we write with
//! those structs.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use super::span::{AttrValue, SpanKind};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// OTLP span flags: the W3C sampled bit (only sampled spans are exported), and whether the
/// parent's is-remote bit is known / the parent is remote.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// Most bytes a span takes besides its name, tracestate and attributes: ids (18 + 10 + 10),
/// the two length prefixes (3 + 3), kind (2), start and end (18), status (4), flags (6).
const SPAN_FRAMING: usize = 74;
/// Most bytes a `KeyValue` takes besides its key and `AnyValue`: three field keys and three
/// lengths of up to two bytes.
const ATTR_FRAMING: usize = 9;

/// The attribute that carries the response status; written from the status code.
const STATUS_ATTR: &str = "http.response.status_code";

/// OTLP `Status.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StatusCode {
    Unset = 0,
    Error = 2,
}

/// OTel HTTP semantic conventions: servers fail on 5xx, clients on 4xx and 5xx; no response
/// (0) or a code outside 1xx..5xx is a failure for both.
pub(super) fn span_status(kind: SpanKind, code: u16) -> StatusCode {
    let error_from = match kind {
        SpanKind::Server => 500,
        SpanKind::Client => 400,
    };
    if code < 100 || code >= error_from {
        StatusCode::Error
    } else {
        StatusCode::Unset
    }
}

/// What one encoded span says; borrowed from the request that ends it.
pub(super) struct SpanFields<'a> {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0 for a root span.
    pub parent_span_id: u64,
    pub tracestate: Option<&'a HeaderValue>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub name: &'a str,
    /// HTTP status sent downstream; 0 when none was sent.
    pub status_code: u16,
    pub attributes: &'a [(&'static str, AttrValue<'a>)],
}

/// The bytes of one `Span` message (without its own field key and length).
pub(super) fn encode_span(s: &SpanFields<'_>) -> Vec<u8> {
    let tracestate = s.tracestate.map_or(&[][..], |v| v.as_bytes());
    // The status code attribute comes from `status_code`, when there is one.
    let status = (s.status_code != 0).then(|| AttrValue::Int(s.status_code.into()));
    let attributes = s
        .attributes
        .iter()
        .filter(|(k, _)| status.is_none() || *k != STATUS_ATTR);
    // An upper bound, not the exact size: each attribute's framing takes at most
    // ATTR_FRAMING bytes beyond its key and value (for values below 16 KiB).
    let attributes_len: usize = attributes
        .clone()
        .map(|(k, v)| ATTR_FRAMING + k.len() + any_value_len(v))
        .sum::<usize>()
        + ATTR_FRAMING
        + STATUS_ATTR.len()
        + 4;
    let mut out =
        Vec::with_capacity(SPAN_FRAMING + tracestate.len() + s.name.len() + attributes_len);
    let o = &mut out;
    bytes(o, 1, &s.trace_id.to_be_bytes());
    bytes(o, 2, &s.span_id.to_be_bytes());
    if !tracestate.is_empty() {
        bytes(o, 3, tracestate);
    }
    // Fields in number order, proto3 defaults left out: the bytes prost writes for the span.
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if s.parent_span_id != 0 {
        bytes(o, 4, &s.parent_span_id.to_be_bytes());
        flags |= FLAG_IS_REMOTE;
    }
    if !s.name.is_empty() {
        bytes(o, 5, s.name.as_bytes());
    }
    key(o, 6, VARINT);
    varint(
        o,
        match s.kind {
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        },
    );
    let start = unix_nanos(s.start);
    // A clock step backwards must not produce a negative duration.
    let end = unix_nanos(s.end).max(start);
    for (field, t) in [(7, start), (8, end)] {
        if t != 0 {
            key(o, field, FIXED64);
            o.extend_from_slice(&t.to_le_bytes());
        }
    }
    if let Some(v) = &status {
        key_value(o, 9, STATUS_ATTR, v);
    }
    for (k, v) in attributes {
        key_value(o, 9, k, v);
    }
    // Status { code = 3 }; Unset is the default and leaves the message empty.
    match span_status(s.kind, s.status_code) {
        StatusCode::Unset => bytes(o, 15, &[]),
        code => bytes(o, 15, &[3 << 3 | VARINT, code as u8]),
    }
    key(o, 16, FIXED32);
    o.extend_from_slice(&flags.to_le_bytes());
    out
}

/// The bytes of an `ExportTraceServiceRequest` with one resource and one scope: `resource`
/// and `scope` are encoded `Resource` and `InstrumentationScope` messages, `spans` encoded
/// `Span`s.
pub(super) fn encode_request<S: AsRef<[u8]>>(
    resource: &[u8],
    scope: &[u8],
    spans: &[S],
) -> Vec<u8> {
    let spans_len: usize = spans.iter().map(|s| field_len(s.as_ref().len())).sum();
    let scope_spans_len = field_len(scope.len()) + spans_len;
    let resource_spans_len = field_len(resource.len()) + field_len(scope_spans_len);
    let mut out = Vec::with_capacity(field_len(resource_spans_len));
    let o = &mut out;
    // ExportTraceServiceRequest.resource_spans = 1
    len_prefix(o, 1, resource_spans_len);
    // ResourceSpans.resource = 1, .scope_spans = 2
    bytes(o, 1, resource);
    len_prefix(o, 2, scope_spans_len);
    // ScopeSpans.scope = 1, .spans = 2
    bytes(o, 1, scope);
    for span in spans {
        bytes(o, 2, span.as_ref());
    }
    out
}

/// An encoded `Resource` with string attributes.
pub(super) fn encode_resource(attributes: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in attributes {
        key_value(&mut out, 1, k, &AttrValue::Str(v));
    }
    out
}

/// An encoded `InstrumentationScope` with a name and a version.
pub(super) fn encode_scope(name: &str, version: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, s) in [(1, name), (2, version)] {
        if !s.is_empty() {
            bytes(&mut out, field, s.as_bytes());
        }
    }
    out
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Length of an `AnyValue` message holding `v`.
fn any_value_len(v: &AttrValue<'_>) -> usize {
    match v {
        AttrValue::Str(s) => field_len(s.len()),
        AttrValue::Bool(_) => 2,
        // int64 is written as the varint of its two's complement.
        AttrValue::Int(i) => 1 + varint_len(*i as u64),
    }
}

/// Length of a `KeyValue` message.
fn key_value_len(k: &str, v: &AttrValue<'_>) -> usize {
    field_len(k.len()) + field_len(any_value_len(v))
}

/// Writes a `KeyValue` message as field `field`.
fn key_value(o: &mut Vec<u8>, field: u32, k: &str, v: &AttrValue<'_>) {
    len_prefix(o, field, key_value_len(k, v));
    bytes(o, 1, k.as_bytes());
    len_prefix(o, 2, any_value_len(v));
    match v {
        AttrValue::Str(s) => bytes(o, 1, s.as_bytes()),
        AttrValue::Bool(b) => {
            key(o, 2, VARINT);
            o.push(u8::from(*b));
        }
        AttrValue::Int(i) => {
            key(o, 3, VARINT);
            varint(o, *i as u64);
        }
    }
}

/// Bytes a length-delimited field of `len` bytes takes (field numbers below 16: one-byte key).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

#[inline]
fn key(o: &mut Vec<u8>, field: u32, wire: u8) {
    varint(o, u64::from(field << 3 | u32::from(wire)));
}

#[inline]
fn len_prefix(o: &mut Vec<u8>, field: u32, len: usize) {
    key(o, field, LEN);
    varint(o, len as u64);
}

#[inline]
fn bytes(o: &mut Vec<u8>, field: u32, b: &[u8]) {
    len_prefix(o, field, b.len());
    o.extend_from_slice(b);
}

#[inline]
fn varint(o: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        o.push(v as u8 | 0x80);
        v >>= 7;
    }
    o.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    match v {
        // Nearly every length we write.
        0..0x80 => 1,
        0x80..0x4000 => 2,
        // 1 byte per started group of 7 bits.
        _ => (64 - v.leading_zeros() as usize).div_ceil(7),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::{span, status};
    use prost::Message;

    use super::*;

    #[test]
    fn status_mapping() {
        use StatusCode::{Error, Unset};
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

    #[test]
    fn varint_lengths_match_what_is_written() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u32::MAX.into(),
            u64::MAX,
            -1i64 as u64,
        ] {
            let mut o = Vec::new();
            varint(&mut o, v);
            assert_eq!(o.len(), varint_len(v), "{v}");
        }
    }

    /// Everything we write decodes with opentelemetry-proto's own types to what we meant.
    #[test]
    fn decodes_with_opentelemetry_proto() {
        let start = UNIX_EPOCH + Duration::from_nanos(1_764_064_800_123_456_789);
        let long = "x".repeat(300);
        let tracestate = HeaderValue::from_static("vendor=abc");
        let child = encode_span(&SpanFields {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            span_id: 0xb7ad6b7169203331,
            parent_span_id: 0x00f067aa0ba902b7,
            tracestate: Some(&tracestate),
            kind: SpanKind::Client,
            start,
            end: start + Duration::from_micros(1500),
            name: "backend.default.svc.cluster.local:8080/*",
            status_code: 503,
            attributes: &[
                ("http.request.method", AttrValue::Str("GET")),
                ("http.response.status_code", AttrValue::Int(200)),
                ("long", AttrValue::Str(&long)),
                ("negative", AttrValue::Int(-7)),
                ("empty", AttrValue::Str("")),
                ("yes", AttrValue::Bool(true)),
                ("no", AttrValue::Bool(false)),
            ],
        });
        // A root server span, ended "before" it started, with no response.
        let root = encode_span(&SpanFields {
            trace_id: 1,
            span_id: 2,
            parent_span_id: 0,
            tracestate: None,
            kind: SpanKind::Server,
            start,
            end: start - Duration::from_secs(1),
            name: "",
            status_code: 0,
            attributes: &[],
        });
        for span in [&child, &root] {
            // An upper bound (a grown Vec would have doubled), and not a wild one.
            let spare = span.capacity() - span.len();
            assert!(
                spare <= 96,
                "capacity estimate off by {spare} for {}",
                span.len()
            );
        }
        let resource = encode_resource(&[("service.name", "frontend"), ("k", "v")]);
        let scope = encode_scope("halyard-proxy", "1.2.3");
        let body = encode_request(&resource, &scope, &[child, root]);
        assert_eq!(body.capacity(), body.len(), "length computed exactly");

        let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        assert_eq!(request.resource_spans.len(), 1);
        let rs = &request.resource_spans[0];
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(
            attrs[0].value.as_ref().unwrap().value,
            Some(Value::StringValue("frontend".into()))
        );
        let ss = &rs.scope_spans[0];
        let s = ss.scope.as_ref().unwrap();
        assert_eq!(
            (s.name.as_str(), s.version.as_str()),
            ("halyard-proxy", "1.2.3")
        );
        assert_eq!(ss.spans.len(), 2);

        let c = &ss.spans[0];
        assert_eq!(
            c.trace_id,
            0x0af7651916cd43dd8448eb211c80319cu128.to_be_bytes()
        );
        assert_eq!(c.span_id, 0xb7ad6b7169203331u64.to_be_bytes());
        assert_eq!(c.parent_span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert_eq!(c.trace_state, "vendor=abc");
        assert_eq!(c.name, "backend.default.svc.cluster.local:8080/*");
        assert_eq!(c.kind, span::SpanKind::Client as i32);
        assert_eq!(c.start_time_unix_nano, 1_764_064_800_123_456_789);
        assert_eq!(c.end_time_unix_nano - c.start_time_unix_nano, 1_500_000);
        assert_eq!(c.flags, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE);
        assert_eq!(
            c.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        let got: Vec<_> = c
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().unwrap().value.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("http.response.status_code", Value::IntValue(503)),
                ("http.request.method", Value::StringValue("GET".into())),
                ("long", Value::StringValue(long.clone())),
                ("negative", Value::IntValue(-7)),
                ("empty", Value::StringValue(String::new())),
                ("yes", Value::BoolValue(true)),
                ("no", Value::BoolValue(false)),
            ]
        );

        let r = &ss.spans[1];
        assert!(r.parent_span_id.is_empty() && r.trace_state.is_empty() && r.name.is_empty());
        assert_eq!(r.trace_id, 1u128.to_be_bytes());
        assert_eq!(r.kind, span::SpanKind::Server as i32);
        assert_eq!(r.end_time_unix_nano, r.start_time_unix_nano);
        assert_eq!(r.flags, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE);
        assert_eq!(
            r.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
        assert!(r.attributes.is_empty());
        // Re-encoding the decoded message gives our bytes back: nothing unknown was skipped.
        assert_eq!(request.encode_to_vec(), body);
    }
}
