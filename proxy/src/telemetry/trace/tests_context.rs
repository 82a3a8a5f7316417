//! Table tests for extraction, sampling and header propagation.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";
const B3_PARENT: &str = "05e3ac9a4f6e3b90";
const B3_TRACE64: &str = "a3ce929d0e0e4736";
const B3_TRACE64_PADDED: &str = "0000000000000000a3ce929d0e0e4736";

/// A tracer whose exporter is never polled; `begin` does not need it.
pub(super) fn tracer(percent: f64) -> Tracer {
    let metrics = Arc::new(TraceMetrics::new(&prometheus::Registry::new()).unwrap());
    let cfg = TraceConfig {
        sampling_percent: percent,
        endpoint: "http://127.0.0.1:9".to_string(),
        protocol: OtlpProtocol::Http,
        service_name: "test".to_string(),
        resource: vec![],
        flush_interval: DEFAULT_FLUSH_INTERVAL,
    };
    Tracer::new(cfg, metrics).unwrap().0
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

struct Case {
    name: &'static str,
    input: &'static [(&'static str, &'static str)],
    percent: f64,
    sampled: bool,
    /// Expected trace id (32 hex); `None`: a fresh one.
    trace: Option<&'static str>,
    /// Expected parent span id; `None`: root.
    parent: Option<&'static str>,
    /// Expected B3 output (`{trace}`/`{span}` = ours): `b3` and the x-b3-* headers present.
    b3: Option<&'static str>,
    multi: &'static [(&'static str, &'static str)],
    /// The caller's `traceparent` goes on unchanged (a W3C decision not to sample).
    unchanged: bool,
}

const fn case(name: &'static str, input: &'static [(&'static str, &'static str)]) -> Case {
    Case {
        name,
        input,
        percent: 0.0,
        sampled: false,
        trace: None,
        parent: None,
        b3: None,
        multi: &[],
        unchanged: false,
    }
}

impl Case {
    const fn pct(mut self, p: f64) -> Self {
        self.percent = p;
        self
    }
    const fn sampled(mut self) -> Self {
        self.sampled = true;
        self
    }
    const fn ctx(mut self, trace: &'static str, parent: &'static str) -> Self {
        self.trace = Some(trace);
        self.parent = Some(parent);
        self
    }
    const fn b3(mut self, v: &'static str) -> Self {
        self.b3 = Some(v);
        self
    }
    const fn multi(mut self, v: &'static [(&'static str, &'static str)]) -> Self {
        self.multi = v;
        self
    }
    const fn unchanged(mut self) -> Self {
        self.unchanged = true;
        self
    }
}

const TP_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP_UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

#[rustfmt::skip] // one case per line reads as a table
fn cases() -> Vec<Case> {
    const TP_03: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03";
    const TP_02: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02";
    const B3_FULL: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
    const B3_NO_PARENT: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    const B3_OUT_1: &str = "80f198ee56343ba864fe8b2a57d3eff7-{span}-1-e457b5a2e4d86bd1";
    const B3_OUT_0: &str = "80f198ee56343ba864fe8b2a57d3eff7-{span}-0-e457b5a2e4d86bd1";
    const B3_DEFERRED: &str = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1";
    const NEW_1: &str = "{trace}-{span}-1";
    const MULTI_NEW: &[(&str, &str)] = &[("x-b3-traceid", "{trace}"), ("x-b3-spanid", "{span}"), ("x-b3-sampled", "1")];
    vec![
        // W3C.
        case("w3c sampled at 100%", &[("traceparent", TP_SAMPLED)]).pct(100.0).sampled().ctx(TRACE, SPAN),
        case("w3c sampled beats 0%", &[("traceparent", TP_SAMPLED)]).sampled().ctx(TRACE, SPAN),
        case("w3c unsampled at 100%", &[("traceparent", TP_UNSAMPLED)]).pct(100.0).ctx(TRACE, SPAN).unchanged(),
        case("w3c other flag bits", &[("traceparent", TP_03)]).sampled().ctx(TRACE, SPAN),
        case("w3c random bit only", &[("traceparent", TP_02)]).pct(100.0).ctx(TRACE, SPAN).unchanged(),
        case("w3c future version", &[("traceparent", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever")]).sampled().ctx(TRACE, SPAN),
        case("w3c future version exact", &[("traceparent", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]).sampled().ctx(TRACE, SPAN),
        case("w3c future version junk", &[("traceparent", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x")]).pct(100.0).sampled(),
        case("w3c version ff", &[("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]).pct(100.0).sampled(),
        case("w3c version ff at 0%", &[("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]),
        case("w3c zero trace id", &[("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")]).pct(100.0).sampled(),
        case("w3c zero span id", &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01")]).pct(100.0).sampled(),
        case("w3c short trace id", &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01")]),
        case("w3c long trace id", &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01")]),
        case("w3c short span id", &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01")]),
        case("w3c short flags", &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")]),
        case("w3c v00 trailing data", &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00")]),
        case("w3c uppercase", &[("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01")]),
        case("w3c bad separator", &[("traceparent", "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01")]),
        case("w3c non-hex flags", &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g")]),
        case("w3c empty", &[("traceparent", "")]),
        case("w3c two headers", &[("traceparent", TP_SAMPLED), ("traceparent", TP_SAMPLED)]).pct(100.0).sampled(),
        // B3 single.
        case("b3 full", &[("b3", B3_FULL)]).sampled().ctx(B3_TRACE, B3_SPAN).b3(B3_OUT_1),
        case("b3 no parent", &[("b3", B3_NO_PARENT)]).sampled().ctx(B3_TRACE, B3_SPAN).b3(B3_OUT_1),
        case("b3 unsampled at 100%", &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0")]).pct(100.0).ctx(B3_TRACE, B3_SPAN).b3(B3_OUT_0),
        case("b3 deferred at 100%", &[("b3", B3_DEFERRED)]).pct(100.0).sampled().ctx(B3_TRACE, B3_SPAN).b3(B3_OUT_1),
        case("b3 deferred at 0%", &[("b3", B3_DEFERRED)]).ctx(B3_TRACE, B3_SPAN).b3(B3_OUT_0),
        case("b3 debug with ids", &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d-05e3ac9a4f6e3b90")])
            .sampled().ctx(B3_TRACE, B3_SPAN).b3("80f198ee56343ba864fe8b2a57d3eff7-{span}-d-e457b5a2e4d86bd1"),
        case("b3 0 at 100%", &[("b3", "0")]).pct(100.0).b3("0"),
        case("b3 1 at 0%", &[("b3", "1")]).sampled().b3(NEW_1),
        case("b3 d at 0%", &[("b3", "d")]).sampled().b3("{trace}-{span}-d"),
        case("b3 64-bit", &[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")])
            .sampled().ctx(B3_TRACE64_PADDED, SPAN).b3("a3ce929d0e0e4736-{span}-1-00f067aa0ba902b7"),
        case("b3 bad state", &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x")]).pct(100.0).sampled().b3(NEW_1),
        case("b3 bad state at 0%", &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x")]).b3("0"),
        case("b3 odd trace length", &[("b3", "80f198ee56343ba864fe8b2a5-e457b5a2e4d86bd1-1")]).pct(100.0).sampled().b3(NEW_1),
        case("b3 uppercase", &[("b3", "80F198EE56343BA864FE8B2A57D3EFF7-E457B5A2E4D86BD1-1")]).pct(100.0).sampled().b3(NEW_1),
        case("b3 five parts", &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-1")]).pct(100.0).sampled().b3(NEW_1),
        case("b3 zero trace", &[("b3", "00000000000000000000000000000000-e457b5a2e4d86bd1-1")]).pct(100.0).sampled().b3(NEW_1),
        case("b3 bad parent", &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3")]).pct(100.0).sampled().b3(NEW_1),
        case("b3 single wins over multi", &[("b3", B3_NO_PARENT), ("x-b3-traceid", B3_TRACE64), ("x-b3-spanid", SPAN)])
            .sampled().ctx(B3_TRACE, B3_SPAN).b3(B3_OUT_1),
        // B3 multi.
        case("multi full", &[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-parentspanid", B3_PARENT), ("x-b3-sampled", "1")])
            .sampled().ctx(B3_TRACE, B3_SPAN)
            .multi(&[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", "{span}"), ("x-b3-parentspanid", B3_SPAN), ("x-b3-sampled", "1")]),
        case("multi unsampled at 100%", &[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", "0")])
            .pct(100.0).ctx(B3_TRACE, B3_SPAN)
            .multi(&[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", "{span}"), ("x-b3-parentspanid", B3_SPAN), ("x-b3-sampled", "0")]),
        case("multi legacy true", &[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", "true")])
            .sampled().ctx(B3_TRACE, B3_SPAN)
            .multi(&[("x-b3-traceid", B3_TRACE), ("x-b3-spanid", "{span}"), ("x-b3-parentspanid", B3_SPAN), ("x-b3-sampled", "1")]),
        case("multi debug", &[("x-b3-traceid", B3_TRACE64), ("x-b3-spanid", B3_SPAN), ("x-b3-flags", "1")])
            .sampled().ctx(B3_TRACE64_PADDED, B3_SPAN)
            .multi(&[("x-b3-traceid", B3_TRACE64), ("x-b3-spanid", "{span}"), ("x-b3-parentspanid", B3_SPAN), ("x-b3-flags", "1")]),
        case("multi sampled-only 0", &[("x-b3-sampled", "0")]).pct(100.0).multi(&[("x-b3-sampled", "0")]),
        case("multi sampled-only 1", &[("x-b3-sampled", "1")]).sampled().multi(MULTI_NEW),
        case("multi missing span id", &[("x-b3-traceid", B3_TRACE), ("x-b3-sampled", "1")]).pct(100.0).sampled().multi(MULTI_NEW),
        // Both: W3C wins, B3 is rewritten with the W3C context.
        case("w3c beats b3", &[("traceparent", TP_UNSAMPLED), ("b3", B3_NO_PARENT)])
            .pct(100.0).ctx(TRACE, SPAN).b3("4bf92f3577b34da6a3ce929d0e0e4736-{span}-0-00f067aa0ba902b7"),
        case("invalid w3c falls back to b3", &[("traceparent", "00-xyz"), ("b3", B3_NO_PARENT)]).sampled().ctx(B3_TRACE, B3_SPAN).b3(B3_OUT_1),
        case("w3c with same 64-bit b3", &[("traceparent", "00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                ("x-b3-traceid", B3_TRACE64), ("x-b3-spanid", SPAN), ("x-b3-sampled", "1")])
            .sampled().ctx(B3_TRACE64_PADDED, SPAN)
            .multi(&[("x-b3-traceid", B3_TRACE64), ("x-b3-spanid", "{span}"), ("x-b3-parentspanid", SPAN), ("x-b3-sampled", "1")]),
        // No context.
        case("none at 0%", &[]),
        case("none at 100%", &[]).pct(100.0).sampled(),
        case("unrelated headers", &[("x-request-id", "abc"), ("content-type", "text/plain")]).pct(100.0).sampled(),
    ]
}

/// Splits our output `traceparent` into (trace, span, flags).
fn parse_out(h: &HeaderMap) -> (String, String, String) {
    let tp = h
        .get("traceparent")
        .expect("traceparent written")
        .to_str()
        .unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{tp}");
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

#[test]
fn propagation_table() {
    const MULTI: [&str; 5] = [
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ];
    for c in cases() {
        let t = tracer(c.percent);
        let mut h = headers(c.input);
        let span = t.begin(SpanKind::Server, &mut h);
        let (trace, span_id, flags) = parse_out(&h);
        let n = c.name;
        assert_eq!(span.is_some(), c.sampled, "{n}: sampled");
        if c.unchanged {
            let sent = c.input.iter().find(|(k, _)| *k == "traceparent");
            assert_eq!(h.get("traceparent").unwrap(), sent.unwrap().1, "{n}");
            assert_eq!(span_id, c.parent.unwrap(), "{n}");
            continue;
        }
        assert_eq!(flags, if c.sampled { "01" } else { "00" }, "{n}: flags");
        assert_ne!(trace, "0".repeat(32), "{n}");
        assert_ne!(span_id, "0".repeat(16), "{n}");
        match c.trace {
            Some(t) => assert_eq!(trace, t, "{n}: trace id"),
            None => {
                for known in [TRACE, B3_TRACE, B3_TRACE64_PADDED] {
                    assert_ne!(trace, known, "{n}: expected a fresh trace id");
                }
            }
        }
        if let Some(s) = &span {
            assert_eq!(s.trace_id_hex(), trace, "{n}");
            assert_eq!(s.span_id_hex(), span_id, "{n}");
            assert_eq!(s.parent_span_id_hex().as_deref(), c.parent, "{n}: parent");
            assert_eq!(s.kind(), SpanKind::Server);
        }
        if let Some(parent) = c.parent {
            assert_ne!(span_id, parent, "{n}: our span id must be new");
        }
        let fill = |s: &str| s.replace("{trace}", &trace).replace("{span}", &span_id);
        let b3 = h.get("b3").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(b3, c.b3.map(fill), "{n}: b3");
        for name in MULTI {
            let want = c
                .multi
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| fill(v));
            let got = h.get(name).map(|v| v.to_str().unwrap().to_string());
            assert_eq!(got, want, "{n}: {name}");
            assert!(
                h.get_all(name).iter().count() <= 1,
                "{n}: {name} duplicated"
            );
        }
        assert_eq!(h.get_all("traceparent").iter().count(), 1, "{n}");
    }
}

#[test]
fn tracestate_passthrough() {
    let t = tracer(0.0);
    let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let mut h = headers(&[("traceparent", TP_SAMPLED), ("tracestate", state)]);
    let span = t.begin(SpanKind::Client, &mut h).unwrap();
    assert_eq!(h.get("tracestate").unwrap(), state);
    assert_eq!(span.tracestate().unwrap(), state);
    assert_eq!(span.kind(), SpanKind::Client);

    // Several tracestate headers stay as they are; the span sees them joined.
    let mut h = headers(&[
        ("traceparent", TP_SAMPLED),
        ("tracestate", "a=1"),
        ("tracestate", "b=2"),
    ]);
    let span = t.begin(SpanKind::Server, &mut h).unwrap();
    let kept: Vec<_> = h.get_all("tracestate").iter().collect();
    assert_eq!(kept, ["a=1", "b=2"]);
    assert_eq!(span.tracestate().unwrap(), "a=1,b=2");

    // Not sampled: still passed on.
    let mut h = headers(&[("traceparent", TP_UNSAMPLED), ("tracestate", state)]);
    assert!(t.begin(SpanKind::Server, &mut h).is_none());
    assert_eq!(h.get("tracestate").unwrap(), state);

    // Without a valid traceparent the state belongs to no trace we continue.
    let t = tracer(100.0);
    for input in [
        &[("tracestate", state)][..],
        &[("traceparent", "ff-bad"), ("tracestate", state)][..],
        &[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("tracestate", state),
        ][..],
    ] {
        let mut h = headers(input);
        let span = t.begin(SpanKind::Server, &mut h).unwrap();
        assert!(h.get("tracestate").is_none(), "{input:?}");
        assert!(span.tracestate().is_none());
    }
}

#[test]
fn fresh_ids_are_random_128_bit() {
    let t = tracer(100.0);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let mut h = HeaderMap::new();
        let span = t.begin(SpanKind::Server, &mut h).unwrap();
        assert!(span.parent_span_id_hex().is_none());
        assert!(span.tracestate().is_none());
        // 128-bit: the high half is practically never all zero.
        assert_ne!(&span.trace_id_hex()[..16], "0000000000000000");
        assert!(seen.insert(span.trace_id_hex()));
        assert!(seen.insert(span.span_id_hex()));
    }
}

#[test]
fn sampling_percentages() {
    let none = tracer(0.0);
    let all = tracer(100.0);
    let half = tracer(50.0);
    let mut sampled = 0;
    for _ in 0..1000 {
        assert!(none
            .begin(SpanKind::Server, &mut HeaderMap::new())
            .is_none());
        assert!(all.begin(SpanKind::Server, &mut HeaderMap::new()).is_some());
        sampled += usize::from(
            half.begin(SpanKind::Server, &mut HeaderMap::new())
                .is_some(),
        );
    }
    assert!((350..650).contains(&sampled), "{sampled} of 1000 at 50%");
}

#[test]
fn next_hop_continues_our_span() {
    // Two proxies in a row: the second one's parent is the first one's span.
    let t = tracer(100.0);
    for input in [
        &[("traceparent", TP_SAMPLED)][..],
        &[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")][..],
        &[
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-sampled", "1"),
        ][..],
        &[][..],
    ] {
        let mut h = headers(input);
        let first = t.begin(SpanKind::Client, &mut h).unwrap();
        let second = t.begin(SpanKind::Server, &mut h).unwrap();
        assert_eq!(second.trace_id_hex(), first.trace_id_hex(), "{input:?}");
        assert_eq!(
            second.parent_span_id_hex(),
            Some(first.span_id_hex()),
            "{input:?}"
        );
    }

    // A root the first proxy does not sample: the second honours that and passes the first
    // one's context on as it is.
    let (first, second) = (tracer(0.0), tracer(100.0));
    let mut h = HeaderMap::new();
    assert!(first.begin(SpanKind::Client, &mut h).is_none());
    let sent = h.get("traceparent").unwrap().clone();
    assert!(sent.to_str().unwrap().ends_with("-00"), "{sent:?}");
    assert!(second.begin(SpanKind::Server, &mut h).is_none());
    assert_eq!(h.get("traceparent"), Some(&sent));
    assert_eq!(h.len(), 1);
}
