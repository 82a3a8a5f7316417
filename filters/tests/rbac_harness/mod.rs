//! The table-test harness shared by `rbac_istio.rs` and `rbac_conditions.rs`: policies written as
//! JSON in the xDS resource's camelCase form (close to Istio's YAML), requests as JSON, and a
//! short expectation language.
//!
//! A request: `{"method": "GET", "path": "/x", "rawPath": "/./x?q", "host": "h", "principal":
//! "cluster.local/ns/a/sa/b", "sourceIp": "…", "remoteIp": "…", "destIp": "…", "port": 8000,
//! "sni": "…", "headers": {"name": "v" | ["v1", "v2"]}, "jwt": {"iss": "…", "sub": "…", "aud":
//! […], "azp": "…", "claims": {…}}, "tcp": true}` — every field optional. `rawPath` is normalised
//! with `halyard_filters::path::normalize` first (as the proxy does); `tcp` decides the
//! connection with `evaluate_tcp`.
//!
//! An expectation: space-separated tokens. The first is `allow` or `deny`, optionally with
//! `:<policy>` (the deciding policy) or `:` (no deciding policy). Then any of
//! `reason:<deny_matched|allow_matched|no_allow_matched|no_policy>`, `audit:<policy>` or
//! `audit:` (none), `shadow:none`, `shadow:allow[:<policy>]`, `shadow:deny[:<policy>]`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use halyard_filters::attrs::{Authenticated, Connection, Request};
use halyard_filters::path::normalize;
use halyard_filters::rbac::{Decision, Engine, Verdict};
use halyard_xds::AuthorizationPolicy;
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Req {
    method: Option<String>,
    path: Option<String>,
    raw_path: Option<String>,
    host: Option<String>,
    principal: Option<String>,
    source_ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
    dest_ip: Option<IpAddr>,
    port: Option<u16>,
    sni: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    jwt: Option<Jwt>,
    #[serde(default)]
    tcp: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Jwt {
    iss: String,
    sub: String,
    #[serde(default)]
    aud: Vec<String>,
    azp: Option<String>,
    #[serde(default)]
    claims: serde_json::Map<String, serde_json::Value>,
}

/// Compiles a JSON array of policies.
pub fn engine(policies: &str) -> Engine {
    let ps: Vec<AuthorizationPolicy> = match serde_json::from_str(policies) {
        Ok(p) => p,
        Err(e) => panic!("bad policy JSON: {e}\n{policies}"),
    };
    match Engine::compile(&ps) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

fn check_verdict(case: &str, what: &str, v: &Verdict<'_>, expect: &str) {
    let (result, policy) = match expect.split_once(':') {
        Some((r, p)) => (r, Some(p)),
        None => (expect, None),
    };
    let want_allowed = match result {
        "allow" => true,
        "deny" => false,
        other => panic!("{case}: bad expectation {other:?}"),
    };
    assert_eq!(v.allowed(), want_allowed, "{case}: {what}: {v:?}");
    if let Some(p) = policy {
        let want = (!p.is_empty()).then_some(p);
        assert_eq!(v.policy, want, "{case}: {what}: deciding policy");
    }
}

fn check_decision(case: &str, d: &Decision<'_>, expect: &str) {
    let mut tokens = expect.split_whitespace();
    let first = tokens.next().unwrap_or_default();
    check_verdict(case, "enforced", &d.enforced, first);
    for t in tokens {
        if let Some(r) = t.strip_prefix("reason:") {
            assert_eq!(d.reason().as_str(), r, "{case}: reason");
        } else if let Some(a) = t.strip_prefix("audit:") {
            assert_eq!(d.audit, (!a.is_empty()).then_some(a), "{case}: audit");
        } else if t == "shadow:none" {
            assert_eq!(d.shadow, None, "{case}: shadow");
        } else if let Some(s) = t.strip_prefix("shadow:") {
            match &d.shadow {
                Some(v) => check_verdict(case, "shadow", v, s),
                None => panic!("{case}: expected a shadow verdict {s:?}"),
            }
        } else {
            panic!("{case}: bad expectation token {t:?}");
        }
    }
}

/// Decides each request of `table` with `policies` and checks its expectation.
pub fn run(case: &str, policies: &str, table: &[(&str, &str)]) {
    let engine = engine(policies);
    for (request, expect) in table {
        let case = format!("{case} / {request}");
        let r: Req = match serde_json::from_str(request) {
            Ok(r) => r,
            Err(e) => panic!("{case}: bad request JSON: {e}"),
        };
        let d = decide(&engine, &r, &case);
        check_decision(&case, &d, expect);
    }
}

fn decide<'e>(engine: &'e Engine, r: &Req, case: &str) -> Decision<'e> {
    let source_ip = r.source_ip.unwrap_or(IpAddr::from([10, 0, 0, 2]));
    let conn = Connection {
        source_ip,
        remote_ip: r.remote_ip.unwrap_or(source_ip),
        destination_ip: r.dest_ip.unwrap_or(IpAddr::from([10, 0, 0, 9])),
        destination_port: r.port.unwrap_or(8000),
        principal: r.principal.as_deref(),
        sni: r.sni.as_deref(),
    };
    if r.tcp {
        return engine.evaluate_tcp(&conn);
    }
    let mut headers = http::HeaderMap::new();
    for (name, v) in &r.headers {
        let values = match v {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v.as_slice(),
        };
        for v in values {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, http::HeaderValue::from_str(v).unwrap());
        }
    }
    let auth = r.jwt.as_ref().map(|j| {
        let mut claims = j.claims.clone();
        claims.insert("iss".into(), j.iss.clone().into());
        claims.insert("sub".into(), j.sub.clone().into());
        Authenticated {
            principal: format!("{}/{}", j.iss, j.sub),
            audiences: j.aud.clone(),
            presenter: j.azp.clone(),
            claims,
        }
    });
    let normalized;
    let path = match (&r.raw_path, &r.path) {
        (Some(raw), _) => {
            normalized = match normalize(raw) {
                Ok(p) => p,
                Err(e) => panic!("{case}: {raw:?} does not normalise: {e}"),
            };
            &*normalized
        }
        (None, Some(p)) => p.as_str(),
        (None, None) => "/",
    };
    let req = Request {
        method: r.method.as_deref().unwrap_or("GET"),
        path,
        host: r.host.as_deref().unwrap_or("httpbin.foo:8000"),
        headers: &headers,
        auth: auth.as_ref(),
    };
    engine.evaluate_http(&conn, &req)
}
