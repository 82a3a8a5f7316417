//! RBAC decisions: `Engine::evaluate_http` with 10 and 1,000 AuthorizationPolicies selecting
//! the workload, for a request an ALLOW policy allows, one a DENY policy denies, and one that
//! matches no policy (denied because ALLOW policies exist). Also the path normalisation that
//! precedes every decision.
//!
//! The policy mix (per 20 policies): 8 ALLOW from one peer principal for GET/POST under its own
//! API prefix; 4 ALLOW for a JWT principal on an exact path with a header condition; 2 DENY of
//! DELETE from a peer principal; 2 DENY of an IP block under `/internal/`; 2 DENY of a
//! namespace on a path prefix; 1 AUDIT of an exact path; 1 DENY by header condition only
//! (never indexable: evaluated for every request).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use halyard_filters::attrs::{Authenticated, Connection, Request};
use halyard_filters::path::normalize;
use halyard_filters::rbac::Engine;
use halyard_xds::authorization_policy::Action;
use halyard_xds::{
    AuthorizationCondition, AuthorizationOperation, AuthorizationPolicy, AuthorizationRule,
    AuthorizationSource,
};
use http::{HeaderMap, HeaderValue};

fn policy(i: usize) -> AuthorizationPolicy {
    let s = |v: String| vec![v];
    let principal = |n: usize| format!("cluster.local/ns/ns{}/sa/svc{n}", n % 50);
    let (action, rule) = match i % 20 {
        0..=7 => (
            Action::Allow,
            AuthorizationRule {
                from: vec![AuthorizationSource {
                    principals: s(principal(i)),
                    ..Default::default()
                }],
                to: vec![AuthorizationOperation {
                    methods: vec!["GET".into(), "POST".into()],
                    paths: s(format!("/api/v1/svc{i}/*")),
                    ..Default::default()
                }],
                when: vec![],
            },
        ),
        8..=11 => (
            Action::Allow,
            AuthorizationRule {
                from: vec![AuthorizationSource {
                    request_principals: s(format!("https://issuer.example.com/user{i}")),
                    ..Default::default()
                }],
                to: vec![AuthorizationOperation {
                    paths: s(format!("/orders/{i}")),
                    methods: s("GET".into()),
                    ..Default::default()
                }],
                when: vec![AuthorizationCondition {
                    key: "request.headers[x-tenant]".into(),
                    values: s(format!("tenant{}", i % 7)),
                    not_values: vec![],
                }],
            },
        ),
        12 | 13 => (
            Action::Deny,
            AuthorizationRule {
                from: vec![AuthorizationSource {
                    principals: s(principal(i - 12)),
                    ..Default::default()
                }],
                to: vec![AuthorizationOperation {
                    methods: s("DELETE".into()),
                    ..Default::default()
                }],
                when: vec![],
            },
        ),
        14 | 15 => (
            Action::Deny,
            AuthorizationRule {
                from: vec![AuthorizationSource {
                    ip_blocks: s(format!("10.{}.{}.0/24", i / 250, i % 250)),
                    ..Default::default()
                }],
                to: vec![AuthorizationOperation {
                    paths: s("/internal/*".into()),
                    ..Default::default()
                }],
                when: vec![],
            },
        ),
        16 | 17 => (
            Action::Deny,
            AuthorizationRule {
                from: vec![AuthorizationSource {
                    namespaces: s(format!("blocked{i}")),
                    ..Default::default()
                }],
                to: vec![AuthorizationOperation {
                    paths: s(format!("/admin/{i}/*")),
                    ..Default::default()
                }],
                when: vec![],
            },
        ),
        18 => (
            Action::Audit,
            AuthorizationRule {
                to: vec![AuthorizationOperation {
                    paths: s(format!("/audit/{i}")),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
        _ => (
            Action::Deny,
            AuthorizationRule {
                when: vec![AuthorizationCondition {
                    key: "request.headers[x-block]".into(),
                    values: s(format!("token{i}")),
                    not_values: vec![],
                }],
                ..Default::default()
            },
        ),
    };
    AuthorizationPolicy {
        name: format!("ns{}/policy-{i}", i % 50),
        action: action as i32,
        rules: vec![rule],
        dry_run: false,
    }
}

fn engine(n: usize) -> Engine {
    let policies: Vec<AuthorizationPolicy> = (0..n).map(policy).collect();
    match Engine::compile(&policies) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

fn conn(principal: &str) -> Connection<'_> {
    Connection {
        source_ip: [10, 200, 3, 4].into(),
        remote_ip: [10, 200, 3, 4].into(),
        destination_ip: [10, 0, 0, 9].into(),
        destination_port: 8080,
        principal: Some(principal),
        sni: None,
    }
}

fn decisions(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("tenant3"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8.5"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let auth = Authenticated {
        principal: "https://issuer.example.com/user9".into(),
        audiences: vec!["web".into()],
        presenter: None,
        claims: serde_json::from_str(r#"{"iss": "https://issuer.example.com", "sub": "user9"}"#)
            .unwrap_or_default(),
    };
    // Allowed by policy 1 (peer principal svc1, GET under /api/v1/svc1/).
    let p_allowed = "cluster.local/ns/ns1/sa/svc1";
    let allowed = Request {
        method: "GET",
        path: "/api/v1/svc1/items/42",
        host: "orders.shop.svc.cluster.local:8080",
        headers: &headers,
        auth: Some(&auth),
    };
    // Denied by policy 12 (DELETE from svc0).
    let p_denied = "cluster.local/ns/ns0/sa/svc0";
    let denied = Request {
        method: "DELETE",
        ..allowed
    };
    // Matches no policy: an unknown peer on an unknown path.
    let p_nothing = "cluster.local/ns/other/sa/stranger";
    let nothing = Request {
        path: "/api/v2/unknown",
        ..allowed
    };

    for n in [10, 1000] {
        let e = engine(n);
        for (what, p, req, want) in [
            ("allowed", p_allowed, &allowed, true),
            ("denied", p_denied, &denied, false),
            ("no_match", p_nothing, &nothing, false),
        ] {
            let cx = conn(p);
            assert_eq!(e.evaluate_http(&cx, req).allowed(), want, "{n} {what}");
            c.bench_function(&format!("rbac/{n}_policies/{what}"), |b| {
                b.iter(|| e.evaluate_http(black_box(&cx), black_box(req)))
            });
        }
        let cx = conn(p_nothing);
        c.bench_function(&format!("rbac/{n}_policies/tcp"), |b| {
            b.iter(|| e.evaluate_tcp(black_box(&cx)))
        });
    }

    let mut g = c.benchmark_group("path_normalize");
    for (name, p) in [
        ("normal", "/api/v1/svc1/items/42?limit=10"),
        ("dirty", "/api//v1/./svc1/%2e%2e/svc1/items%2F42"),
    ] {
        g.bench_function(name, |b| b.iter(|| normalize(black_box(p)).is_ok()));
    }
    g.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
