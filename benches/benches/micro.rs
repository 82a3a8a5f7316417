//! Micro benchmarks of request-path pieces: protocol detection and route lookup.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use halyard_proxy::detect::classify;
use halyard_proxy::snapshot::Snapshot;
use http::{HeaderMap, Method};

fn detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("detect");
    let inputs: [(&str, &[u8]); 4] = [
        ("http1", b"GET /index.html HTTP/1.1\r\nHost: x\r\n"),
        ("http2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("tls", &[0x16, 0x03, 0x01, 0x02, 0x00]),
        ("tcp", b"\x00\x00\x00\x2a\x0a\x05mysql"),
    ];
    for (name, bytes) in inputs {
        g.bench_function(name, |b| b.iter(|| classify(black_box(bytes))));
    }
    g.finish();
}

/// A config with `n` services, each with its own host and a virtual host of four routes.
fn config(n: usize) -> String {
    let mut y = String::from("services:\n");
    for i in 0..n {
        y += &format!(
            "  - name: svc{i}\n    hosts: [svc{i}.ns.svc.cluster.local]\n    ports: [{{port: 80, protocol: HTTP}}]\n    endpoints: [{{address: 10.0.{}.{}}}]\n",
            i / 250,
            i % 250 + 1
        );
    }
    y += "virtualHosts:\n";
    for i in 0..n {
        y += &format!(
            "  - name: vh{i}\n    hosts: [svc{i}.ns.svc.cluster.local, '*.svc{i}.example.com']\n    routes:\n      - {{name: a, match: [{{uri: {{prefix: /api/v1/}}, method: {{exact: POST}}}}], route: {{service: svc{i}}}}}\n      - {{name: b, match: [{{uri: {{prefix: /api/}}}}], route: {{service: svc{i}}}}}\n      - {{name: c, match: [{{headers: {{x-canary: {{exact: 'yes'}}}}}}], route: {{service: svc{i}}}}}\n      - {{name: d, route: {{service: svc{i}}}}}\n"
        );
    }
    y
}

fn routing(c: &mut Criterion) {
    let cfg = halyard_xds::parse_str(&config(1000), Path::new("bench.yaml"))
        .expect("bench config is valid");
    let jwks = halyard_filters::jwt::JwksStore::new(tokio_util::sync::CancellationToken::new());
    let snap = Snapshot::build(cfg.clone(), None, &jwks).expect("bench config compiles");
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_lookup_1000_hosts");
    g.bench_function("exact_host_last_route", |b| {
        b.iter(|| {
            snap.routes.find(
                black_box("svc777.ns.svc.cluster.local"),
                &Method::GET,
                "/static/x",
                &headers,
            )
        })
    });
    g.bench_function("exact_host_first_route", |b| {
        b.iter(|| {
            snap.routes.find(
                black_box("svc777.ns.svc.cluster.local"),
                &Method::POST,
                "/api/v1/orders",
                &headers,
            )
        })
    });
    g.bench_function("wildcard_host", |b| {
        b.iter(|| {
            snap.routes.find(
                black_box("a.svc500.example.com"),
                &Method::GET,
                "/",
                &headers,
            )
        })
    });
    g.bench_function("unknown_host", |b| {
        b.iter(|| {
            snap.routes
                .find(black_box("nope.example.org"), &Method::GET, "/", &headers)
        })
    });
    g.finish();
    c.bench_function("snapshot_build_1000_services", |b| {
        b.iter(|| Snapshot::build(cfg.clone(), Some(&snap), &jwks))
    });
}

criterion_group!(benches, detection, routing);
criterion_main!(benches);
