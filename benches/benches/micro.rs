//! Micro benchmarks of request-path pieces: protocol detection, route lookup and matching.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use halyard_proxy::detect::classify;
use halyard_proxy::routes::RequestView;
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

fn view<'a>(
    host: &'a str,
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
) -> RequestView<'a> {
    RequestView {
        method,
        path,
        query: None,
        host,
        authority: host,
        scheme: "http",
        port: Some(80),
        headers,
    }
}

fn routing(c: &mut Criterion) {
    let cfg = halyard_xds::parse_str(&config(1000), Path::new("bench.yaml"))
        .expect("bench config is valid");
    let jwks = halyard_filters::jwt::JwksStore::new(tokio_util::sync::CancellationToken::new());
    let snap = Snapshot::build(cfg.clone(), None, &jwks).expect("bench config compiles");
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_lookup_1000_hosts");
    let cases = [
        (
            "exact_host_last_route",
            "svc777.ns.svc.cluster.local",
            Method::GET,
            "/static/x",
        ),
        (
            "exact_host_first_route",
            "svc777.ns.svc.cluster.local",
            Method::POST,
            "/api/v1/orders",
        ),
        ("wildcard_host", "a.svc500.example.com", Method::GET, "/"),
        ("unknown_host", "nope.example.org", Method::GET, "/"),
    ];
    for (name, host, method, path) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                snap.outbound
                    .routes
                    .find(&view(black_box(host), method, path, &headers))
                    .is_some()
            })
        });
    }
    g.finish();
    c.bench_function("snapshot_build_1000_services", |b| {
        b.iter(|| Snapshot::build(cfg.clone(), Some(&snap), &jwks))
    });
}

/// One host with `n` ordered routes, each matching a path prefix, a header and a method, the
/// shape of a large VirtualService; the request matches route `hit` (n = no match).
fn one_host_routes(n: usize) -> String {
    let mut y = String::from("services:\n  - name: svc\n    hosts: [svc.ns.svc.cluster.local]\n    ports: [{port: 80, protocol: HTTP}]\n    endpoints: [{address: 10.0.0.1}]\n    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n");
    y += "virtualHosts:\n  - name: big\n    hosts: [svc.ns.svc.cluster.local]\n    routes:\n";
    for i in 0..n {
        let m = match i % 4 {
            0 => format!("[{{uri: {{prefix: /r{i}/}}, headers: {{x-tenant: {{exact: t{i}}}}}}}]"),
            1 => format!("[{{uri: {{exact: /r{i}}}, method: {{exact: GET}}}}]"),
            2 => format!("[{{uri: {{regex: '/r{i}/[0-9]+'}}}}]"),
            _ => format!("[{{uri: {{prefix: /r{i}/}}, queryParams: {{v: {{exact: '2'}}}}}}]"),
        };
        y += &format!("      - {{name: r{i}, match: {m}, destinations: [{{service: svc, subset: v1, weight: 90}}, {{service: svc, subset: v2, weight: 10}}]}}\n");
    }
    y
}

fn route_matching(c: &mut Criterion) {
    let cfg = halyard_xds::parse_str(&one_host_routes(1000), Path::new("bench.yaml"))
        .expect("bench config is valid");
    let jwks = halyard_filters::jwt::JwksStore::new(tokio_util::sync::CancellationToken::new());
    let snap = Snapshot::build(cfg, None, &jwks).expect("bench config compiles");
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "t996".parse().expect("header"));
    let host = "svc.ns.svc.cluster.local";
    let mut g = c.benchmark_group("route_match_1000_routes");
    for (name, path) in [
        ("second_exact", "/r1"),
        ("middle_exact", "/r501"),
        ("last_prefix_header", "/r996/x"),
        ("no_match", "/none"),
    ] {
        let ok = snap
            .outbound
            .routes
            .find(&view(host, &Method::GET, path, &headers))
            .is_some();
        assert_eq!(ok, name != "no_match", "{name}");
        g.bench_function(name, |b| {
            b.iter(|| {
                snap.outbound
                    .routes
                    .find(&view(host, &Method::GET, black_box(path), &headers))
                    .is_some()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, detection, routing, route_matching);
criterion_main!(benches);
