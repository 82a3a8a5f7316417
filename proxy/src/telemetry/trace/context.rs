//! Propagation: reads the caller's trace context from W3C (`traceparent`/`tracestate`) or B3
//! (single `b3` or multi `x-b3-*`) headers and writes ours for the next hop.
//!
//! Ids are plain integers (`u128` trace id, `u64` span id, 0 = absent) so that extraction
//! and injection work on stack buffers; the only allocations are the rewritten header values.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::owned_value;
use crate::hex::hex16;

/// W3C trace context.
pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C vendor state; passed through unchanged.
pub(super) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
/// The B3 multi-header names.
const B3_MULTI: [HeaderName; 5] = [
    B3_TRACE_ID,
    B3_SPAN_ID,
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
    B3_FLAGS,
];

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;
/// Longest `b3` value we write: 32 + 1 + 16 + 1 + 1 + 1 + 16.
const B3_MAX_LEN: usize = 68;

/// Which B3 encoding the request carried (and gets back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum B3Form {
    /// One `b3` header.
    Single,
    /// `x-b3-traceid`, `x-b3-spanid`, ... headers.
    Multi,
}

/// What the caller sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Incoming {
    /// Caller's trace id; 0 when there is no usable context.
    pub trace_id: u128,
    /// Caller's span id (our parent); 0 when there is none.
    pub span_id: u64,
    /// The caller's sampling decision; `None` leaves it to us.
    pub sampled: Option<bool>,
    /// B3 debug: sampled, and the flag is propagated.
    pub debug: bool,
    /// The context came from `traceparent`, so `tracestate` belongs to it.
    pub w3c: bool,
    /// B3 headers were present in this form; they are rewritten in the same form.
    pub b3: Option<B3Form>,
    /// The B3 trace id was 64-bit; B3 output keeps it that way.
    pub b3_short: bool,
    /// A `tracestate` header was present.
    pub tracestate: bool,
}

/// A parsed B3 context (either form).
#[derive(Clone, Copy, Debug, Default)]
struct B3Context {
    trace_id: u128,
    span_id: u64,
    short: bool,
    sampled: Option<bool>,
    debug: bool,
}

/// Reads the caller's context: W3C first, then B3 single, then B3 multi. Malformed headers
/// count as absent.
pub(super) fn extract(headers: &HeaderMap) -> Incoming {
    // One pass over the names instead of a hash lookup per propagation header: most requests
    // carry none of them, and a request's header map is small. Names are compared as
    // `HeaderName`s, so a standard header (most of them) is told apart by its kind alone.
    let (mut w3c, mut single, mut multi, mut state) = (false, false, false, false);
    for name in headers.keys() {
        if *name == TRACEPARENT {
            w3c = true;
        } else if *name == TRACESTATE {
            state = true;
        } else if *name == B3 {
            single = true;
        } else if B3_MULTI.iter().any(|h| name == h) {
            multi = true;
        }
    }
    let b3_form = if single {
        Some(B3Form::Single)
    } else if multi {
        Some(B3Form::Multi)
    } else {
        None
    };
    let mut incoming = Incoming {
        b3: b3_form,
        tracestate: state,
        ..Incoming::default()
    };
    let b3 = b3_form.and_then(|form| match form {
        B3Form::Single => headers.get(B3).and_then(|v| parse_b3_single(v.as_bytes())),
        B3Form::Multi => parse_b3_multi(headers),
    });
    if let Some((trace_id, span_id, sampled)) = w3c.then(|| parse_traceparent(headers)).flatten() {
        incoming.trace_id = trace_id;
        incoming.span_id = span_id;
        incoming.sampled = Some(sampled);
        incoming.w3c = true;
        // Keep a 64-bit B3 id only when it names the same trace.
        incoming.b3_short = b3.is_some_and(|b| b.short && b.trace_id == trace_id);
    } else if let Some(b) = b3 {
        incoming.trace_id = b.trace_id;
        incoming.span_id = b.span_id;
        incoming.sampled = b.sampled;
        incoming.debug = b.debug;
        incoming.b3_short = b.short;
    }
    incoming
}

/// The caller's `tracestate` (several headers joined with commas), when there is one.
pub(super) fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return (!first.is_empty()).then(|| first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Rewrites the propagation headers so that the next hop sees `span_id` as its parent.
pub(super) fn inject(
    headers: &mut HeaderMap,
    incoming: &Incoming,
    trace_id: u128,
    span_id: u64,
    sampled: bool,
) {
    if let Some(v) = traceparent(trace_id, span_id, sampled) {
        headers.insert(TRACEPARENT, v);
    }
    if !incoming.w3c && incoming.tracestate {
        // A tracestate without a valid traceparent belongs to no trace we continue.
        headers.remove(TRACESTATE);
    }
    let Some(form) = incoming.b3 else {
        return;
    };
    let trace_digits = if incoming.b3_short && trace_id >> 64 == 0 {
        16
    } else {
        32
    };
    // Without a caller context a not-sampled decision travels alone, as B3 allows.
    let with_ids = sampled || incoming.trace_id != 0;
    let debug = sampled && incoming.debug;
    match form {
        B3Form::Single => {
            for h in &B3_MULTI {
                headers.remove(h);
            }
            if !with_ids {
                headers.insert(B3, HeaderValue::from_static("0"));
                return;
            }
            let mut buf = Buf::new();
            buf.hex(trace_id, trace_digits);
            buf.push(b"-");
            buf.hex(u128::from(span_id), 16);
            buf.push(match (debug, sampled) {
                (true, _) => b"-d",
                (false, true) => b"-1",
                (false, false) => b"-0",
            });
            if incoming.span_id != 0 {
                buf.push(b"-");
                buf.hex(u128::from(incoming.span_id), 16);
            }
            if let Some(v) = buf.value() {
                headers.insert(B3, v);
            }
        }
        B3Form::Multi => {
            for h in &B3_MULTI {
                headers.remove(h);
            }
            if with_ids {
                insert_hex(headers, B3_TRACE_ID, trace_id, trace_digits);
                insert_hex(headers, B3_SPAN_ID, u128::from(span_id), 16);
                if incoming.span_id != 0 {
                    insert_hex(headers, B3_PARENT_SPAN_ID, incoming.span_id.into(), 16);
                }
            }
            // Debug implies sampled, so B3 says not to send both.
            let (name, value) = match (debug, sampled) {
                (true, _) => (B3_FLAGS, "1"),
                (false, true) => (B3_SAMPLED, "1"),
                (false, false) => (B3_SAMPLED, "0"),
            };
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
}

/// A version-00 `traceparent`, written at fixed offsets: every traced request gets one, so
/// it skips the bounds-checked appends the variable-length B3 values need.
fn traceparent(trace_id: u128, span_id: u64, sampled: bool) -> Option<HeaderValue> {
    let mut v = [b'-'; TRACEPARENT_LEN];
    v[..2].copy_from_slice(b"00");
    v[3..19].copy_from_slice(&hex16((trace_id >> 64) as u64));
    v[19..35].copy_from_slice(&hex16(trace_id as u64));
    v[36..52].copy_from_slice(&hex16(span_id));
    v[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    owned_value(v)
}

fn insert_hex(headers: &mut HeaderMap, name: HeaderName, v: u128, digits: usize) {
    let mut buf = Buf::new();
    buf.hex(v, digits);
    if let Some(v) = buf.value() {
        headers.insert(name, v);
    }
}

/// `traceparent` → (trace id, parent span id, sampled), per W3C Trace Context level 1.
fn parse_traceparent(headers: &HeaderMap) -> Option<(u128, u64, bool)> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None; // several traceparent headers cannot be combined
    }
    let s = value.as_bytes();
    let version = parse_hex(s.get(0..2)?)?;
    // Version ff is forbidden; 00 has an exact length; later versions may append fields.
    let length_ok = match version {
        0xff => false,
        0 => s.len() == TRACEPARENT_LEN,
        _ => s.len() == TRACEPARENT_LEN || s.get(TRACEPARENT_LEN) == Some(&b'-'),
    };
    if !length_ok || s.get(2) != Some(&b'-') || s.get(35) != Some(&b'-') || s.get(52) != Some(&b'-')
    {
        return None;
    }
    let trace_id = parse_hex(s.get(3..35)?)?;
    let span_id = u64::try_from(parse_hex(s.get(36..52)?)?).ok()?;
    let flags = parse_hex(s.get(53..55)?)?;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags & 1 == 1))
}

/// `b3: {trace}-{span}[-{state}[-{parent}]]` or `b3: {state}`.
fn parse_b3_single(s: &[u8]) -> Option<B3Context> {
    if s.len() == 1 {
        let (sampled, debug) = parse_b3_state(s)?;
        return Some(B3Context {
            sampled,
            debug,
            ..B3Context::default()
        });
    }
    let mut parts = s.split(|&b| b == b'-');
    let (trace_id, short) = parse_b3_trace_id(parts.next()?)?;
    let span_id = parse_span_id(parts.next()?)?;
    let (sampled, debug) = match parts.next() {
        Some(state) => parse_b3_state(state)?,
        None => (None, false),
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Context {
        trace_id,
        span_id,
        short,
        sampled,
        debug,
    })
}

/// `x-b3-*` headers; a sampling decision may come without ids.
fn parse_b3_multi(headers: &HeaderMap) -> Option<B3Context> {
    let debug = headers.get(B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    // B3 asks receivers to accept the legacy true/false too; other values mean "no decision".
    let sampled = match headers.get(B3_SAMPLED).map(HeaderValue::as_bytes) {
        _ if debug => Some(true),
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        _ => None,
    };
    let mut ctx = B3Context {
        sampled,
        debug,
        ..B3Context::default()
    };
    match (headers.get(B3_TRACE_ID), headers.get(B3_SPAN_ID)) {
        (None, None) => {}
        (Some(trace), Some(span)) => {
            (ctx.trace_id, ctx.short) = parse_b3_trace_id(trace.as_bytes())?;
            ctx.span_id = parse_span_id(span.as_bytes())?;
        }
        _ => return None,
    }
    Some(ctx)
}

/// B3 sampling state → (decision, debug).
fn parse_b3_state(s: &[u8]) -> Option<(Option<bool>, bool)> {
    match s {
        b"0" => Some((Some(false), false)),
        b"1" => Some((Some(true), false)),
        b"d" => Some((Some(true), true)),
        _ => None,
    }
}

/// 16 or 32 lower-hex digits, not all zero → (id, was 64-bit).
fn parse_b3_trace_id(s: &[u8]) -> Option<(u128, bool)> {
    if s.len() != 16 && s.len() != 32 {
        return None;
    }
    let id = parse_hex(s)?;
    (id != 0).then_some((id, s.len() == 16))
}

/// 16 lower-hex digits, not all zero.
fn parse_span_id(s: &[u8]) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    let id = u64::try_from(parse_hex(s)?).ok()?;
    (id != 0).then_some(id)
}

/// Lower-case hex (W3C forbids upper case; B3 specifies lower-hex) of at most 32 digits.
fn parse_hex(s: &[u8]) -> Option<u128> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    s.iter().try_fold(0u128, |acc, &c| {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(digit))
    })
}

/// A stack buffer for header values, so formatting ids allocates nothing.
struct Buf {
    bytes: [u8; B3_MAX_LEN],
    len: usize,
}

impl Buf {
    fn new() -> Self {
        Self {
            bytes: [0; B3_MAX_LEN],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let end = (self.len + s.len()).min(B3_MAX_LEN);
        if let (Some(dst), Some(src)) = (self.bytes.get_mut(self.len..end), s.get(..end - self.len))
        {
            dst.copy_from_slice(src);
        }
        self.len = end;
    }

    /// The low `digits` hex digits of `v`, zero-padded (`digits` is 16 or 32).
    fn hex(&mut self, v: u128, digits: usize) {
        if digits > 16 {
            self.push(&hex16((v >> 64) as u64));
        }
        self.push(&hex16(v as u64));
    }

    /// The header value, owning this buffer (see [`owned_value`]).
    fn value(self) -> Option<HeaderValue> {
        owned_value(self)
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Lower-case hex of a trace id (32 digits).
pub(super) fn trace_id_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// Lower-case hex of a span id (16 digits).
pub(super) fn span_id_hex(id: u64) -> String {
    format!("{id:016x}")
}
