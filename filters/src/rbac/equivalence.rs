//! The index must never change an answer: random policy sets and random requests, decided by
//! the indexed engine and by the reference evaluation that checks every rule in order.

use halyard_xds::authorization_policy::Action;
use halyard_xds::{
    AuthorizationCondition, AuthorizationOperation, AuthorizationPolicy, AuthorizationRule,
    AuthorizationSource,
};
use http::HeaderMap;

use super::Engine;
use crate::attrs::{Authenticated, Connection, Request};

/// xorshift64*: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    fn some(&mut self, from: &[&str]) -> Vec<String> {
        (0..1 + self.below(3))
            .map(|_| self.pick(from).to_string())
            .collect()
    }
    /// Values with probability `p`, else none.
    fn maybe(&mut self, p: u64, from: &[&str]) -> Vec<String> {
        if self.chance(p) {
            self.some(from)
        } else {
            vec![]
        }
    }
}

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/a/sa/x",
    "cluster.local/ns/b/sa/y",
    "cluster.local/ns/a/sa/z",
    "cluster.local/ns/c/sa/x",
];
const PRINCIPAL_PATTERNS: &[&str] = &[
    "cluster.local/ns/a/sa/x",
    "cluster.local/ns/b/sa/y",
    "cluster.local/ns/a/sa/z",
    "cluster.local/ns/a/sa/x",
    "*",
    "cluster.local/ns/a/*",
    "*/sa/x",
];
const NAMESPACES: &[&str] = &["a", "b", "c", "*", "a*"];
const IPS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "192.168.1.1",
    "::1",
    "0.0.0.0/0",
];
const PATHS: &[&str] = &["/a", "/a/b", "/b", "/c/x/d", "/", "/a/b/c", "/A", "/c/x"];
const PATH_PATTERNS: &[&str] = &[
    "/a", "/a/b", "/b", "/c/x/d", "/a*", "/a/*", "*/b", "/a/{*}", "/{**}", "*", "/c/{*}/d",
];
const METHODS: &[&str] = &["GET", "POST", "PUT"];
const METHOD_PATTERNS: &[&str] = &["GET", "POST", "PUT", "GET", "*", "P*"];
const HOSTS: &[&str] = &[
    "example.com",
    "API.example.com",
    "example.com:8080",
    "Example.COM",
    "other",
];
const HOST_PATTERNS: &[&str] = &[
    "example.com",
    "*.example.com",
    "Example.com:8080",
    "api*",
    "*",
    "other",
];
const PORTS: &[u32] = &[80, 8080, 9000];
const USERS: &[&str] = &["alice", "bob", "*", "a*", "carol"];
const REQ_PRINCIPALS: &[&str] = &["iss/alice", "iss/*", "*", "other/bob", "iss/bob"];
const GROUPS: &[&str] = &["admin", "dev", "*"];

fn source(r: &mut Rng) -> AuthorizationSource {
    AuthorizationSource {
        principals: r.maybe(45, PRINCIPAL_PATTERNS),
        not_principals: r.maybe(10, PRINCIPAL_PATTERNS),
        request_principals: r.maybe(20, REQ_PRINCIPALS),
        not_request_principals: r.maybe(5, REQ_PRINCIPALS),
        namespaces: r.maybe(20, NAMESPACES),
        not_namespaces: r.maybe(10, NAMESPACES),
        ip_blocks: r.maybe(15, IPS),
        not_ip_blocks: r.maybe(10, IPS),
        remote_ip_blocks: r.maybe(10, IPS),
        not_remote_ip_blocks: r.maybe(5, IPS),
    }
}

fn ports(r: &mut Rng, p: u64) -> Vec<u32> {
    if r.chance(p) {
        (0..1 + r.below(2))
            .map(|_| PORTS[r.below(PORTS.len())])
            .collect()
    } else {
        vec![]
    }
}

fn operation(r: &mut Rng) -> AuthorizationOperation {
    AuthorizationOperation {
        hosts: r.maybe(20, HOST_PATTERNS),
        not_hosts: r.maybe(5, HOST_PATTERNS),
        ports: ports(r, 25),
        not_ports: ports(r, 10),
        methods: r.maybe(35, METHOD_PATTERNS),
        not_methods: r.maybe(10, METHOD_PATTERNS),
        paths: r.maybe(45, PATH_PATTERNS),
        not_paths: r.maybe(10, PATH_PATTERNS),
    }
}

fn condition(r: &mut Rng) -> AuthorizationCondition {
    let (key, vals): (&str, &[&str]) = match r.below(9) {
        0 => ("request.headers[x-user]", USERS),
        1 => ("source.ip", IPS),
        2 => ("destination.port", &["80", "8080", "9000"]),
        3 => ("source.principal", PRINCIPAL_PATTERNS),
        4 => ("request.auth.principal", REQ_PRINCIPALS),
        5 => ("request.auth.claims[groups]", GROUPS),
        6 => ("connection.sni", &["a.example.com", "*.example.com"]),
        7 => ("source.namespace", NAMESPACES),
        _ => ("request.auth.audiences", &["web", "api"]),
    };
    let values = r.maybe(80, vals);
    let not_values = if values.is_empty() || r.chance(15) {
        r.some(vals)
    } else {
        vec![]
    };
    AuthorizationCondition {
        key: key.into(),
        values,
        not_values,
    }
}

fn policies(r: &mut Rng) -> Vec<AuthorizationPolicy> {
    (0..1 + r.below(40))
        .map(|i| {
            let action = match r.below(10) {
                0..=4 => Action::Allow,
                5..=8 => Action::Deny,
                _ => Action::Audit,
            };
            let rules = (0..r.below(4))
                .map(|_| AuthorizationRule {
                    from: (0..r.below(3)).map(|_| source(r)).collect(),
                    to: (0..r.below(3)).map(|_| operation(r)).collect(),
                    when: (0..r.below(3)).map(|_| condition(r)).collect(),
                })
                .collect();
            AuthorizationPolicy {
                name: format!("ns/p{i}"),
                action: action as i32,
                rules,
                dry_run: r.chance(15),
            }
        })
        .collect()
}

#[test]
fn indexed_engine_equals_reference_evaluation() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut decisions, mut allowed, mut by_policy) = (0u32, 0u32, 0u32);
    for _ in 0..400 {
        let ps = policies(&mut r);
        let engine = match Engine::compile(&ps) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        };
        for _ in 0..150 {
            let mut headers = HeaderMap::new();
            if r.chance(60) {
                let v = r.pick(&["alice", "bob", "", "anna"]);
                headers.insert("x-user", http::HeaderValue::from_static(v));
            }
            if r.chance(10) {
                // More keyed header values than the lookup has slots for.
                for _ in 0..12 {
                    let v = r.pick(&["alice", "bob", "carol"]);
                    headers.append("x-user", http::HeaderValue::from_static(v));
                }
            }
            let auth = r.chance(60).then(|| {
                let iss = r.pick(&["iss", "other"]);
                let sub = r.pick(&["alice", "bob"]);
                let mut claims = serde_json::Map::new();
                claims.insert("iss".into(), iss.into());
                claims.insert("sub".into(), sub.into());
                if r.chance(50) {
                    let g = r.pick(&["admin", "dev", "ops"]);
                    claims.insert("groups".into(), serde_json::json!([g, "users"]));
                }
                Authenticated {
                    principal: format!("{iss}/{sub}"),
                    audiences: vec![r.pick(&["web", "api", "x"]).into()],
                    presenter: None,
                    claims,
                }
            });
            let ip = |r: &mut Rng| {
                r.pick(&[
                    "10.1.2.3",
                    "10.2.0.1",
                    "192.168.1.1",
                    "::1",
                    "::ffff:10.1.0.9",
                ])
                .parse()
                .unwrap()
            };
            let conn = Connection {
                source_ip: ip(&mut r),
                remote_ip: ip(&mut r),
                destination_ip: ip(&mut r),
                destination_port: PORTS[r.below(PORTS.len())] as u16,
                principal: r.chance(75).then(|| r.pick(PRINCIPALS)),
                sni: r.chance(50).then(|| r.pick(&["a.example.com", "b.other"])),
            };
            let req = Request {
                method: r.pick(METHODS),
                path: r.pick(PATHS),
                host: r.pick(HOSTS),
                headers: &headers,
                auth: auth.as_ref(),
            };
            let http = engine.evaluate_http(&conn, &req);
            assert_eq!(
                http,
                engine.evaluate_naive(&conn, Some(&req)),
                "HTTP {conn:?} {req:?}\n{ps:#?}"
            );
            let tcp = engine.evaluate_tcp(&conn);
            assert_eq!(
                tcp,
                engine.evaluate_naive(&conn, None),
                "TCP {conn:?}\n{ps:#?}"
            );
            decisions += 1;
            allowed += u32::from(http.allowed());
            by_policy += u32::from(http.policy().is_some());
        }
    }
    // The random sets must exercise both outcomes and matching policies, or the test
    // proves nothing.
    assert!(
        allowed > decisions / 10 && allowed < decisions * 9 / 10,
        "{allowed}/{decisions}"
    );
    assert!(by_policy > decisions / 10, "{by_policy}/{decisions}");
}
