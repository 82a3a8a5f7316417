//! Istio standard metrics and peer metadata on the request path: `IstioMetrics::record_request`
//! with a warm per-thread cache (one label set, and 64 label sets in turn), a TCP connection's
//! open/bytes/close, and `peer::decode` of an Istio-sized metadata header when cached and when
//! every lookup misses; and the tracing work every request pays when tracing is on:
//! `Tracer::begin` on typical request headers, unsampled and sampled.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use halyard_proxy::telemetry::istio::{
    IstioMetrics, Reporter, RequestLabels, TcpLabels, DEFAULT_MAX_LABEL_SETS,
};
use halyard_proxy::telemetry::peer::{self, PeerHeaders, WorkloadMeta};

fn workload(name: &str, app: &str, version: &str) -> WorkloadMeta {
    let labels: HashMap<String, String> = [
        ("app", app),
        ("version", version),
        ("service.istio.io/canonical-name", app),
        ("service.istio.io/canonical-revision", version),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    WorkloadMeta::from_labels(name, "default", &labels)
}

fn request<'a>(src: &'a WorkloadMeta, dst: &'a WorkloadMeta) -> RequestLabels<'a> {
    RequestLabels {
        reporter: Reporter::Destination,
        source: src,
        source_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        destination: dst,
        destination_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        destination_service: "reviews.default.svc.cluster.local",
        grpc: false,
        response_code: 200,
        grpc_status: None,
        response_flags: "-",
        mutual_tls: true,
    }
}

fn metrics(c: &mut Criterion) {
    // The registry's type comes from `IstioMetrics::new`'s signature.
    let registry = Default::default();
    let m = IstioMetrics::new(&registry, DEFAULT_MAX_LABEL_SETS).expect("register");
    let src = workload("productpage-v1", "productpage", "v1");
    let dst = workload("reviews-v2", "reviews", "v2");
    let mut g = c.benchmark_group("istio");

    let labels = request(&src, &dst);
    m.record_request(&labels, Duration::from_millis(3), 512, 2048);
    g.bench_function("record_request_warm", |b| {
        b.iter(|| {
            m.record_request(
                black_box(&labels),
                black_box(Duration::from_micros(3_200)),
                black_box(512),
                black_box(2048),
            )
        })
    });

    let codes: Vec<u16> = (0..64).map(|i| 200 + i).collect();
    let sets: Vec<RequestLabels<'_>> = codes
        .iter()
        .map(|&response_code| RequestLabels {
            response_code,
            ..request(&src, &dst)
        })
        .collect();
    for l in &sets {
        m.record_request(l, Duration::from_millis(1), 1, 1);
    }
    let mut i = 0;
    g.bench_function("record_request_warm_64_sets", |b| {
        b.iter(|| {
            i = (i + 1) % sets.len();
            m.record_request(black_box(&sets[i]), Duration::from_micros(800), 100, 200)
        })
    });

    let tcp = TcpLabels {
        reporter: Reporter::Destination,
        source: &src,
        source_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        destination: &dst,
        destination_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
        destination_service: "mysql.default.svc.cluster.local",
        response_flags: "-",
        mutual_tls: true,
    };
    drop(m.tcp_open(&tcp));
    g.bench_function("tcp_open_bytes_close_warm", |b| {
        b.iter(|| {
            let conn = m.tcp_open(black_box(&tcp));
            conn.sent(black_box(1_000));
            conn.received(black_box(100));
        })
    });
    g.finish();
}

fn metadata(c: &mut Criterion) {
    let mut labels = HashMap::new();
    labels.insert("app".to_string(), "productpage".to_string());
    labels.insert("version".to_string(), "v1".to_string());
    let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 17)));
    let header = |name: &str| {
        let meta = WorkloadMeta::from_labels(name, "default", &labels);
        PeerHeaders::with_cluster(&meta, &labels, ip, "Kubernetes", "cluster.local").metadata
    };
    let mut g = c.benchmark_group("peer");
    let steady = header("productpage-v1");
    g.bench_function("decode_cached", |b| {
        b.iter(|| peer::decode(black_box(&steady)))
    });
    // More distinct peers than the cache holds, in turn: every lookup decodes.
    let many: Vec<_> = (0..256)
        .map(|i| header(&format!("productpage-v{i}")))
        .collect();
    let mut i = 0;
    g.bench_function("decode_miss", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            peer::decode(black_box(&many[i]))
        })
    });
    g.finish();
}

fn request_headers() -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in [
        ("host", "reviews.default.svc.cluster.local:9080"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-request-id", "6f0c5b8e-2f5e-4bb6-9d1a-3c1f5e8b9a77"),
        ("x-forwarded-for", "10.0.0.7"),
        ("x-forwarded-proto", "http"),
    ] {
        h.insert(
            http::HeaderName::from_static(k),
            http::HeaderValue::from_static(v),
        );
    }
    h
}

fn propagation(c: &mut Criterion) {
    use halyard_proxy::telemetry::trace::{
        AttrValue, OtlpProtocol, SpanEnd, SpanKind, TraceConfig, TraceMetrics, Tracer,
        DEFAULT_FLUSH_INTERVAL,
    };
    let registry = Default::default();
    let metrics = std::sync::Arc::new(TraceMetrics::new(&registry).expect("register"));
    let tracer = |percent: f64| {
        let cfg = TraceConfig {
            sampling_percent: percent,
            endpoint: "http://127.0.0.1:4318".into(),
            protocol: OtlpProtocol::Http,
            service_name: "reviews.default".into(),
            resource: Vec::new(),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        };
        // The exporter is not run: begin() alone is measured.
        Tracer::new(cfg, metrics.clone()).expect("tracer").0
    };
    let mut g = c.benchmark_group("trace");
    let base = request_headers();
    g.bench_function("clone_headers_baseline", |b| {
        b.iter(|| black_box(base.clone()))
    });
    let t1 = tracer(1.0);
    g.bench_function("begin_no_context_1pct", |b| {
        b.iter(|| {
            let mut h = base.clone();
            black_box(t1.begin(SpanKind::Client, &mut h));
            h
        })
    });
    let mut w3c = base.clone();
    w3c.insert(
        "traceparent",
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    g.bench_function("begin_w3c_sampled", |b| {
        b.iter(|| {
            let mut h = w3c.clone();
            black_box(t1.begin(SpanKind::Server, &mut h));
            h
        })
    });
    // A sampled span ended with the attributes the proxy records (once the queue is full
    // the span is dropped after encoding, so this measures begin + encode).
    let attributes = [
        ("http.request.method", AttrValue::Str("GET")),
        ("url.path", AttrValue::Str("/api/v1/products/42")),
        ("url.scheme", AttrValue::Str("http")),
        (
            "server.address",
            AttrValue::Str("backend.default.svc.cluster.local"),
        ),
        ("network.protocol.version", AttrValue::Str("1.1")),
        ("user_agent.original", AttrValue::Str("oha/1.4.5")),
        (
            "guid:x-request-id",
            AttrValue::Str("2d6a3c1e-5f0b-4a7d-9c3e-8b1f0a2d4e6c"),
        ),
        ("response_flags", AttrValue::Str("-")),
        ("istio.canonical_service", AttrValue::Str("frontend")),
        ("istio.namespace", AttrValue::Str("default")),
        (
            "source.principal",
            AttrValue::Str("spiffe://cluster.local/ns/default/sa/frontend"),
        ),
        (
            "destination.principal",
            AttrValue::Str("spiffe://cluster.local/ns/default/sa/backend"),
        ),
        (
            "destination.service",
            AttrValue::Str("backend.default.svc.cluster.local"),
        ),
        ("server.port", AttrValue::Int(8080)),
        (
            "upstream_cluster",
            AttrValue::Str("outbound|8080||backend.default.svc.cluster.local"),
        ),
        ("upstream_address", AttrValue::Str("10.0.0.7:8080")),
    ];
    g.bench_function("begin_finish_sampled", |b| {
        b.iter(|| {
            let mut h = w3c.clone();
            if let Some(span) = t1.begin(SpanKind::Client, &mut h) {
                span.finish(
                    &t1,
                    SpanEnd {
                        name: "backend.default.svc.cluster.local:8080/*",
                        status_code: 200,
                        attributes: &attributes,
                    },
                );
            }
            h
        })
    });
    g.finish();
}

criterion_group!(benches, metrics, metadata, propagation);
criterion_main!(benches);
