//! Decision tables for every source and operation field and its `not` form, every condition
//! key of Istio's "Authorization policy conditions" page (with its example values), the
//! "Authorization Policy Normalization" page's bypass attempts (decided on the normalised
//! path, as the proxy does) and the reference's path-template examples.
#![forbid(unsafe_code)]

mod rbac_harness;

use rbac_harness::{engine, run};

/// One ALLOW policy `p/allow` with a single rule made of `rule` (JSON members).
fn allow(rule: &str) -> String {
    format!(r#"[{{"name": "p/allow", "rules": [{{{rule}}}]}}]"#)
}

/// One condition, `values` or `notValues`.
fn when(key: &str, which: &str, values: &str) -> String {
    allow(&format!(
        r#""when": [{{"key": "{key}", "{which}": {values}}}]"#
    ))
}

const YES: &str = "allow:p/allow";
const NO: &str = "deny: reason:no_allow_matched";

#[test]
fn source_fields_and_not_forms() {
    let p = r#""principal": "cluster.local/ns/default/sa/productpage""#;
    for (field, value, matching, other) in [
        (
            "principals",
            r#"["cluster.local/ns/default/sa/productpage"]"#,
            p,
            r#""principal": "cluster.local/ns/default/sa/x""#,
        ),
        (
            "principals",
            r#"["cluster.local/ns/default/*"]"#,
            p,
            r#""principal": "cluster.local/ns/prod/sa/productpage""#,
        ),
        (
            "principals",
            r#"["*/sa/productpage"]"#,
            p,
            r#""principal": "cluster.local/ns/default/sa/reviews""#,
        ),
        (
            "namespaces",
            r#"["default"]"#,
            p,
            r#""principal": "cluster.local/ns/prod/sa/productpage""#,
        ),
        (
            "namespaces",
            r#"["def*"]"#,
            p,
            r#""principal": "cluster.local/ns/prod/sa/x""#,
        ),
        (
            "ipBlocks",
            r#"["10.1.0.0/16"]"#,
            r#""sourceIp": "10.1.2.3""#,
            r#""sourceIp": "10.2.0.1""#,
        ),
        (
            "ipBlocks",
            r#"["2001:db8::/32"]"#,
            r#""sourceIp": "2001:db8::1""#,
            r#""sourceIp": "2001:db9::1""#,
        ),
        (
            "remoteIpBlocks",
            r#"["192.168.0.1"]"#,
            r#""remoteIp": "192.168.0.1""#,
            r#""remoteIp": "192.168.0.2""#,
        ),
        (
            "requestPrincipals",
            r#"["accounts.my-svc.com/104958560606"]"#,
            r#""jwt": {"iss": "accounts.my-svc.com", "sub": "104958560606"}"#,
            r#""jwt": {"iss": "accounts.my-svc.com", "sub": "1"}"#,
        ),
        (
            "requestPrincipals",
            r#"["https://accounts.google.com/*"]"#,
            r#""jwt": {"iss": "https://accounts.google.com", "sub": "x"}"#,
            r#""jwt": {"iss": "https://accounts.google.com/evil", "sub": "x"}"#,
        ),
    ] {
        let upper = |s: &str| s[..1].to_uppercase() + &s[1..];
        let case = format!("source {field} {value}");
        let pos = allow(&format!(r#""from": [{{"{field}": {value}}}]"#));
        let neg = allow(&format!(r#""from": [{{"not{}": {value}}}]"#, upper(field)));
        let (m, o) = (format!("{{{matching}}}"), format!("{{{other}}}"));
        run(&case, &pos, &[(&m, YES), (&o, NO)]);
        run(&format!("{case} (not)"), &neg, &[(&m, NO), (&o, YES)]);
    }
    // Absent attributes: no peer identity, no JWT.
    run(
        "principals [*] without a peer",
        &allow(r#""from": [{"principals": ["*"]}]"#),
        &[(r#"{}"#, NO)],
    );
    run(
        "notPrincipals [*] without a peer",
        &allow(r#""from": [{"notPrincipals": ["*"]}]"#),
        &[(r#"{}"#, YES)],
    );
    run(
        "namespaces [*] without a peer",
        &allow(r#""from": [{"namespaces": ["*"]}]"#),
        &[(r#"{}"#, NO)],
    );
    run(
        "requestPrincipals [*] without a JWT",
        &allow(r#""from": [{"requestPrincipals": ["*"]}]"#),
        &[(r#"{}"#, NO)],
    );
    // Fields in a source are ANDed, values ORed, sources ORed.
    let both = allow(
        r#""from": [{"namespaces": ["a"], "ipBlocks": ["10.0.0.0/8"]}, {"principals": ["td/ns/z/sa/z"]}]"#,
    );
    run(
        "source fields ANDed, sources ORed",
        &both,
        &[
            (
                r#"{"principal": "td/ns/a/sa/s", "sourceIp": "10.9.9.9"}"#,
                YES,
            ),
            (
                r#"{"principal": "td/ns/a/sa/s", "sourceIp": "11.0.0.1"}"#,
                NO,
            ),
            (
                r#"{"principal": "td/ns/z/sa/z", "sourceIp": "11.0.0.1"}"#,
                YES,
            ),
        ],
    );
}

#[test]
fn operation_fields_and_not_forms() {
    for (field, value, matching, other) in [
        (
            "hosts",
            r#"["httpbin.foo"]"#,
            r#""host": "HTTPBIN.foo:8000""#,
            r#""host": "httpbin.bar""#,
        ),
        (
            "hosts",
            r#"["*.example.com"]"#,
            r#""host": "api.Example.com""#,
            r#""host": "example.com""#,
        ),
        (
            "hosts",
            r#"["api*"]"#,
            r#""host": "api.example.com:443""#,
            r#""host": "web.example.com""#,
        ),
        (
            "hosts",
            r#"["httpbin.foo:8000"]"#,
            r#""host": "httpbin.foo:8000""#,
            r#""host": "httpbin.foo:9000""#,
        ),
        (
            "methods",
            r#"["GET", "HEAD"]"#,
            r#""method": "HEAD""#,
            r#""method": "get""#,
        ),
        (
            "paths",
            r#"["/info"]"#,
            r#""path": "/info""#,
            r#""path": "/info/""#,
        ),
        (
            "paths",
            r#"["/test/*"]"#,
            r#""path": "/test/a/b""#,
            r#""path": "/test""#,
        ),
        (
            "paths",
            r#"["*/info"]"#,
            r#""path": "/a/b/info""#,
            r#""path": "/info/a""#,
        ),
        (
            "paths",
            r#"["/api/{*}/items"]"#,
            r#""path": "/api/v1/items""#,
            r#""path": "/api/v1/x/items""#,
        ),
        (
            "paths",
            r#"["/static/{**}"]"#,
            r#""path": "/static/css/a.css""#,
            r#""path": "/static""#,
        ),
    ] {
        let upper = |s: &str| s[..1].to_uppercase() + &s[1..];
        let case = format!("operation {field} {value}");
        let pos = allow(&format!(r#""to": [{{"{field}": {value}}}]"#));
        let neg = allow(&format!(r#""to": [{{"not{}": {value}}}]"#, upper(field)));
        let (m, o) = (format!("{{{matching}}}"), format!("{{{other}}}"));
        run(&case, &pos, &[(&m, YES), (&o, NO)]);
        run(&format!("{case} (not)"), &neg, &[(&m, NO), (&o, YES)]);
    }
    run(
        "operation ports / notPorts",
        r#"[{"name": "p/allow", "rules": [{"to": [{"ports": [8000, 8080]}]}]},
            {"name": "p/deny", "action": "DENY", "rules": [{"to": [{"notPorts": [8000, 8080, 9000]}]}]}]"#,
        &[
            (r#"{"port": 8080}"#, YES),
            (r#"{"port": 9000}"#, NO),
            (r#"{"port": 9001}"#, "deny:p/deny"),
            (r#"{"port": 9001, "tcp": true}"#, "deny:p/deny"),
        ],
    );
    // Fields in an operation are ANDed.
    run(
        "operation fields ANDed",
        &allow(r#""to": [{"methods": ["GET"], "paths": ["/a"], "hosts": ["h"], "ports": [8000]}]"#),
        &[
            (r#"{"path": "/a", "host": "h"}"#, YES),
            (r#"{"path": "/a", "host": "h", "method": "PUT"}"#, NO),
            (r#"{"path": "/b", "host": "h"}"#, NO),
            (r#"{"path": "/a", "host": "h", "port": 1}"#, NO),
        ],
    );
}

#[test]
fn conditions_page_keys() {
    // (key, example values, a matching request, a non-matching one, a request without it).
    let jwt = |claims: &str| {
        format!(
            r#"{{"jwt": {{"iss": "accounts.my-svc.com", "sub": "104958560606", "aud": ["my-svc.com"], "azp": "123456789012.my-svc.com", "claims": {claims}}}}}"#
        )
    };
    let cases: Vec<(&str, &str, String, String, Option<String>)> = vec![
        (
            "request.headers[User-Agent]",
            r#"["Mozilla/*"]"#,
            r#"{"headers": {"user-agent": "Mozilla/5.0"}}"#.into(),
            r#"{"headers": {"user-agent": "curl/8"}}"#.into(),
            Some("{}".into()),
        ),
        (
            "source.ip",
            r#"["10.1.2.3", "10.2.0.0/16"]"#,
            r#"{"sourceIp": "10.2.9.9"}"#.into(),
            r#"{"sourceIp": "10.3.0.1"}"#.into(),
            None,
        ),
        (
            "remote.ip",
            r#"["10.1.2.3", "10.2.0.0/16"]"#,
            r#"{"remoteIp": "10.1.2.3"}"#.into(),
            r#"{"remoteIp": "10.1.2.4"}"#.into(),
            None,
        ),
        (
            "source.namespace",
            r#"["default"]"#,
            r#"{"principal": "cluster.local/ns/default/sa/a"}"#.into(),
            r#"{"principal": "cluster.local/ns/prod/sa/a"}"#.into(),
            Some("{}".into()),
        ),
        (
            "source.principal",
            r#"["cluster.local/ns/default/sa/productpage"]"#,
            r#"{"principal": "cluster.local/ns/default/sa/productpage"}"#.into(),
            r#"{"principal": "cluster.local/ns/default/sa/a"}"#.into(),
            Some("{}".into()),
        ),
        (
            "request.auth.principal",
            r#"["accounts.my-svc.com/104958560606"]"#,
            jwt("{}"),
            r#"{"jwt": {"iss": "accounts.my-svc.com", "sub": "1"}}"#.into(),
            Some("{}".into()),
        ),
        (
            "request.auth.audiences",
            r#"["my-svc.com"]"#,
            jwt("{}"),
            r#"{"jwt": {"iss": "i", "sub": "s", "aud": ["other.com"]}}"#.into(),
            Some("{}".into()),
        ),
        (
            "request.auth.presenter",
            r#"["123456789012.my-svc.com"]"#,
            jwt("{}"),
            r#"{"jwt": {"iss": "i", "sub": "s", "azp": "x"}}"#.into(),
            Some(r#"{"jwt": {"iss": "i", "sub": "s"}}"#.into()),
        ),
        (
            "request.auth.claims[iss]",
            r#"["*@foo.com"]"#,
            r#"{"jwt": {"iss": "bob@foo.com", "sub": "s"}}"#.into(),
            r#"{"jwt": {"iss": "bob@bar.com", "sub": "s"}}"#.into(),
            Some("{}".into()),
        ),
        (
            "request.auth.claims[nested1][nested2]",
            r#"["value1"]"#,
            jwt(r#"{"nested1": {"nested2": ["value0", "value1"]}}"#),
            jwt(r#"{"nested1": {"nested2": "value2"}}"#),
            Some(jwt(r#"{"nested1": "value1"}"#)),
        ),
        (
            "request.auth.claims[admin]",
            r#"["true"]"#,
            jwt(r#"{"admin": true}"#),
            jwt(r#"{"admin": false}"#),
            Some(jwt("{}")),
        ),
        (
            "destination.ip",
            r#"["10.1.2.3", "10.2.0.0/16"]"#,
            r#"{"destIp": "10.1.2.3"}"#.into(),
            r#"{"destIp": "10.0.0.9"}"#.into(),
            None,
        ),
        (
            "destination.port",
            r#"["80", "443"]"#,
            r#"{"port": 443}"#.into(),
            r#"{"port": 8443}"#.into(),
            None,
        ),
        (
            "connection.sni",
            r#"["www.example.com"]"#,
            r#"{"sni": "www.example.com"}"#.into(),
            r#"{"sni": "api.example.com"}"#.into(),
            Some("{}".into()),
        ),
    ];
    for (key, values, matching, other, absent) in cases {
        let case = format!("condition {key}");
        let mut table = vec![(matching.as_str(), YES), (other.as_str(), NO)];
        let mut not_table = vec![(matching.as_str(), NO), (other.as_str(), YES)];
        if let Some(a) = &absent {
            // An absent attribute matches no value: it fails `values`, passes `notValues`.
            table.push((a.as_str(), NO));
            not_table.push((a.as_str(), YES));
        }
        run(&case, &when(key, "values", values), &table);
        run(
            &format!("{case} (notValues)"),
            &when(key, "notValues", values),
            &not_table,
        );
    }
}

#[test]
fn header_condition_details() {
    run(
        "request.headers wildcards and pseudo-headers",
        r#"[{"name": "p/present", "rules": [{"when": [{"key": "request.headers[x-a]", "values": ["*"]}]}]},
            {"name": "p/host", "rules": [{"when": [{"key": "request.headers[:authority]", "values": ["*.internal"]}]}]},
            {"name": "p/method", "rules": [{"when": [{"key": "request.headers[:method]", "values": ["DELETE"]}]}]}]"#,
        &[
            (r#"{"headers": {"x-a": ""}}"#, "allow:p/present"),
            (r#"{"host": "db.internal"}"#, "allow:p/host"),
            (r#"{"method": "DELETE"}"#, "allow:p/method"),
            (r#"{}"#, NO),
        ],
    );
}

#[test]
fn compile_errors_name_policy_and_field() {
    for (policies, needle) in [
        (
            r#"[{"name": "x/bad", "rules": [{"when": [{"key": "request.nope"}]}]}]"#,
            "x/bad\": rules[0].when[0].key: unknown condition key",
        ),
        (
            r#"[{"name": "x/bad", "rules": [{}, {"from": [{"ipBlocks": ["300.0.0.1"]}]}]}]"#,
            "rules[1].from[0].source.ipBlocks[0]",
        ),
        (
            r#"[{"name": "x/bad", "rules": [{"to": [{"paths": ["/{**}/a/{*}"]}]}]}]"#,
            "rules[0].to[0].operation.paths[0]: path template",
        ),
        (
            r#"[{"name": "x/bad", "rules": [{"when": [{"key": "destination.port", "notValues": ["x"]}]}]}]"#,
            "rules[0].when[0].notValues[0]",
        ),
    ] {
        let ps: Vec<halyard_xds::AuthorizationPolicy> = serde_json::from_str(policies).unwrap();
        match halyard_filters::rbac::Engine::compile(&ps) {
            Ok(_) => panic!("{policies} compiled"),
            Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
        }
    }
    assert!(engine("[]").is_empty());
}

#[test]
fn normalization_page_bypass_attempts() {
    // A DENY on /admin (exact and below) must catch every spelling of it; decided on the
    // normalised path.
    let policies = r#"[{"name": "p/deny-admin", "action": "DENY", "rules": [{"to": [{"paths": ["/admin", "/admin/*"]}]}]}]"#;
    let mut table = Vec::new();
    let attempts = [
        "/admin",
        "/admin/",
        "/admin?x=1",
        "/admin#f",
        "//admin",
        "/./admin",
        "/%2Fadmin",
        "/%2fadmin",
        "/%5Cadmin",
        "\\\\admin",
        "/%2e%2e/admin",
        "/%2E%2E/admin",
        "/.%2e/admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/a%2F..%2Fadmin",
        "/a%5C..%5Cadmin",
        "/%61dmin",
        "/%61%64%6D%69%6E/x",
        "/admin/./x",
        "///admin//x",
        "/../../admin",
    ];
    let requests: Vec<String> = attempts
        .iter()
        .map(|p| format!(r#"{{"rawPath": {}}}"#, serde_json::to_string(p).unwrap()))
        .collect();
    for r in &requests {
        table.push((r.as_str(), "deny:p/deny-admin"));
    }
    // Not /admin: different names, and escapes that are not unreserved characters.
    let others = [
        "/administrator",
        "/Admin",
        "/public/admin",
        "/%252e%252e/admin",
        "/adm%69n%3F",
    ];
    let others: Vec<String> = others
        .iter()
        .map(|p| format!(r#"{{"rawPath": {}}}"#, serde_json::to_string(p).unwrap()))
        .collect();
    for r in &others {
        table.push((r.as_str(), "allow:"));
    }
    run("normalization: deny /admin", policies, &table);
    // An exact path alone does not cover the trailing slash (why the docs add /admin/*).
    run(
        "normalization: exact path only",
        r#"[{"name": "p/deny", "action": "DENY", "rules": [{"to": [{"paths": ["/admin"]}]}]}]"#,
        &[
            (r#"{"rawPath": "/admin/"}"#, "allow:"),
            (r#"{"rawPath": "/x/../admin"}"#, "deny:p/deny"),
        ],
    );
}

#[test]
fn reference_path_templates() {
    run(
        "reference: path templates",
        r#"[{"name": "p/one", "rules": [{"to": [{"paths": ["/foo/{*}"]}]}]},
            {"name": "p/rest", "rules": [{"to": [{"paths": ["/bar/{**}/"]}]}]},
            {"name": "p/mixed", "rules": [{"to": [{"paths": ["/baz/{*}/bar/{**}"]}]}]}]"#,
        &[
            (r#"{"path": "/foo/bar"}"#, "allow:p/one"),
            (r#"{"path": "/foo/bar/baz"}"#, NO),
            (r#"{"path": "/bar/x/"}"#, "allow:p/rest"),
            (r#"{"path": "/bar//"}"#, "allow:p/rest"),
            (r#"{"path": "/bar/x"}"#, NO),
            (r#"{"path": "/baz/buzz/bar/"}"#, "allow:p/mixed"),
            (r#"{"path": "/baz/buzz/bar/baz"}"#, "allow:p/mixed"),
        ],
    );
}
