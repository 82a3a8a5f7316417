//! Decision tables taken from Istio's documentation: the "Authorization Policy" reference, the
//! "Security" concepts page and the authorization tasks (HTTP traffic, explicit deny, TCP
//! traffic, JWT, ingress IP lists, dry run). Each test is named after the example it comes
//! from; policies are the documented ones in the xDS form (selectors already resolved).
#![forbid(unsafe_code)]

mod rbac_harness;

use rbac_harness::run;

const SLEEP: &str = "cluster.local/ns/default/sa/sleep";

#[test]
fn reference_httpbin_allow_example() {
    // Allows GET /info* or POST /data from the sleep service account or the test namespace,
    // when the JWT was issued by https://accounts.google.com.
    let policy = r#"[{"name": "foo/httpbin", "action": "ALLOW", "rules": [{
        "from": [{"principals": ["cluster.local/ns/default/sa/sleep"]}, {"namespaces": ["test"]}],
        "to": [{"methods": ["GET"], "paths": ["/info*"]}, {"methods": ["POST"], "paths": ["/data"]}],
        "when": [{"key": "request.auth.claims[iss]", "values": ["https://accounts.google.com"]}]
    }]}]"#;
    let jwt = r#""jwt": {"iss": "https://accounts.google.com", "sub": "u1"}"#;
    run(
        "reference: httpbin ALLOW",
        policy,
        &[
            (
                &format!(r#"{{"principal": "{SLEEP}", "path": "/info/a", {jwt}}}"#),
                "allow:foo/httpbin reason:allow_matched",
            ),
            (
                &format!(
                    r#"{{"principal": "cluster.local/ns/test/sa/x", "method": "POST", "path": "/data", {jwt}}}"#
                ),
                "allow:foo/httpbin",
            ),
            (
                &format!(r#"{{"principal": "{SLEEP}", "method": "POST", "path": "/info", {jwt}}}"#),
                "deny: reason:no_allow_matched",
            ),
            (
                &format!(r#"{{"principal": "{SLEEP}", "path": "/data", {jwt}}}"#),
                "deny:",
            ),
            (
                &format!(
                    r#"{{"principal": "cluster.local/ns/prod/sa/x", "path": "/info", {jwt}}}"#
                ),
                "deny:",
            ),
            (
                &format!(r#"{{"principal": "{SLEEP}", "path": "/info"}}"#),
                "deny:",
            ),
            (
                r#"{"path": "/info", "jwt": {"iss": "https://accounts.google.com", "sub": "u"}}"#,
                "deny:",
            ),
        ],
    );
}

#[test]
fn reference_deny_post_from_dev_namespace() {
    let policy = r#"[{"name": "foo/httpbin", "action": "DENY", "rules": [{
        "from": [{"namespaces": ["dev"]}], "to": [{"methods": ["POST"]}]}]}]"#;
    run(
        "reference: DENY POST from dev",
        policy,
        &[
            (
                r#"{"principal": "cluster.local/ns/dev/sa/a", "method": "POST"}"#,
                "deny:foo/httpbin reason:deny_matched",
            ),
            (
                r#"{"principal": "cluster.local/ns/dev/sa/a", "method": "GET"}"#,
                "allow: reason:no_policy",
            ),
            (
                r#"{"principal": "cluster.local/ns/prod/sa/a", "method": "POST"}"#,
                "allow:",
            ),
            (r#"{"method": "POST"}"#, "allow:"),
        ],
    );
}

#[test]
fn reference_allow_nothing() {
    // `spec: {}`: an ALLOW policy that matches nothing.
    run(
        "reference: allow-nothing",
        r#"[{"name": "foo/allow-nothing"}]"#,
        &[
            (r#"{}"#, "deny: reason:no_allow_matched"),
            (&format!(r#"{{"principal": "{SLEEP}"}}"#), "deny:"),
            (r#"{"tcp": true}"#, "deny:"),
        ],
    );
}

#[test]
fn reference_deny_all() {
    // `action: DENY, rules: [{}]` denies everything, whatever ALLOW policies say.
    let policies = r#"[{"name": "foo/allow-all", "rules": [{}]},
                       {"name": "foo/deny-all", "action": "DENY", "rules": [{}]}]"#;
    run(
        "reference: deny-all",
        policies,
        &[
            (r#"{}"#, "deny:foo/deny-all"),
            (
                &format!(r#"{{"principal": "{SLEEP}", "method": "POST", "path": "/x"}}"#),
                "deny:foo/deny-all",
            ),
            (r#"{"tcp": true}"#, "deny:foo/deny-all"),
        ],
    );
}

#[test]
fn reference_allow_all() {
    run(
        "reference: allow-all",
        r#"[{"name": "foo/allow-all", "action": "ALLOW", "rules": [{}]}]"#,
        &[
            (r#"{}"#, "allow:foo/allow-all"),
            (r#"{"tcp": true}"#, "allow:foo/allow-all"),
        ],
    );
}

#[test]
fn reference_no_policy_allows_everything() {
    run(
        "no policy",
        "[]",
        &[(r#"{}"#, "allow: reason:no_policy audit: shadow:none")],
    );
}

#[test]
fn reference_audit_user_profile() {
    // AUDIT never changes the decision; it reports the matching policy.
    let policies = r#"[{"name": "foo/audit", "action": "AUDIT", "rules": [{
        "to": [{"methods": ["GET"], "paths": ["/user/profile/*"]}]}]},
        {"name": "foo/deny-post", "action": "DENY", "rules": [{"to": [{"methods": ["POST"]}]}]}]"#;
    run(
        "reference: AUDIT /user/profile/*",
        policies,
        &[
            (
                r#"{"path": "/user/profile/me"}"#,
                "allow: reason:no_policy audit:foo/audit",
            ),
            (r#"{"path": "/user/settings"}"#, "allow: audit:"),
            (
                r#"{"method": "POST", "path": "/user/profile/me"}"#,
                "deny:foo/deny-post audit:",
            ),
        ],
    );
}

#[test]
fn concepts_authenticated_and_unauthenticated_identity() {
    // Leaving `from` empty allows everyone; `principals: ["*"]` only authenticated peers.
    run(
        "concepts: public workload",
        r#"[{"name": "foo/httpbin", "rules": [{"to": [{"methods": ["GET", "POST"]}]}]}]"#,
        &[
            (r#"{"method": "POST"}"#, "allow:foo/httpbin"),
            (r#"{"method": "PUT"}"#, "deny:"),
        ],
    );
    run(
        "concepts: authenticated only",
        r#"[{"name": "foo/httpbin", "rules": [{"from": [{"principals": ["*"]}],
            "to": [{"methods": ["GET", "POST"]}]}]}]"#,
        &[
            (
                &format!(r#"{{"principal": "{SLEEP}"}}"#),
                "allow:foo/httpbin",
            ),
            (r#"{}"#, "deny: reason:no_allow_matched"),
            (r#"{"principal": ""}"#, "deny:"),
        ],
    );
}

#[test]
fn concepts_exclusion_matching() {
    // "Require a JWT on every path but /healthz" (ALLOW with notPaths) and "deny /admin to
    // requests without a request principal" (DENY with notRequestPrincipals).
    let policies = r#"[
        {"name": "foo/jwt-except-healthz", "rules": [{"from": [{"requestPrincipals": ["*"]}],
            "to": [{"notPaths": ["/healthz"]}]}]},
        {"name": "foo/healthz", "rules": [{"to": [{"paths": ["/healthz"]}]}]},
        {"name": "foo/admin-needs-jwt", "action": "DENY", "rules": [{
            "from": [{"notRequestPrincipals": ["*"]}], "to": [{"paths": ["/admin"]}]}]}]"#;
    let jwt = r#""jwt": {"iss": "issuer", "sub": "alice"}"#;
    run(
        "concepts: exclusion matching",
        policies,
        &[
            (
                &format!(r#"{{"path": "/data", {jwt}}}"#),
                "allow:foo/jwt-except-healthz",
            ),
            (r#"{"path": "/data"}"#, "deny: reason:no_allow_matched"),
            (r#"{"path": "/healthz"}"#, "allow:foo/healthz"),
            (r#"{"path": "/admin"}"#, "deny:foo/admin-needs-jwt"),
            (
                &format!(r#"{{"path": "/admin", {jwt}}}"#),
                "allow:foo/jwt-except-healthz",
            ),
        ],
    );
}

#[test]
fn concepts_custom_conditions_version_header() {
    let policy = r#"[{"name": "foo/httpbin", "rules": [{
        "from": [{"principals": ["cluster.local/ns/default/sa/sleep"]}],
        "to": [{"methods": ["GET"]}],
        "when": [{"key": "request.headers[version]", "values": ["v1", "v2"]}]}]}]"#;
    run(
        "concepts: custom conditions",
        policy,
        &[
            (
                &format!(r#"{{"principal": "{SLEEP}", "headers": {{"version": "v2"}}}}"#),
                "allow:foo/httpbin",
            ),
            (
                &format!(r#"{{"principal": "{SLEEP}", "headers": {{"version": ["v3", "v1"]}}}}"#),
                "allow",
            ),
            (
                &format!(r#"{{"principal": "{SLEEP}", "headers": {{"version": "v3"}}}}"#),
                "deny:",
            ),
            (&format!(r#"{{"principal": "{SLEEP}"}}"#), "deny:"),
        ],
    );
}

#[test]
fn task_http_traffic_bookinfo() {
    // allow-nothing in the namespace, then productpage-viewer (GET from anyone) and
    // details-viewer (GET from the productpage service account).
    let policies = r#"[
        {"name": "default/allow-nothing"},
        {"name": "default/productpage-viewer", "rules": [{"to": [{"methods": ["GET"]}],
            "when": [{"key": "destination.port", "values": ["9080"]}]}]},
        {"name": "default/details-viewer", "rules": [{
            "from": [{"principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]}],
            "to": [{"methods": ["GET"]}]}]}]"#;
    run(
        "task HTTP traffic: bookinfo",
        policies,
        &[
            (r#"{"port": 9080}"#, "allow:default/productpage-viewer"),
            (r#"{"port": 9080, "method": "POST"}"#, "deny:"),
            (
                r#"{"port": 9081, "principal": "cluster.local/ns/default/sa/bookinfo-productpage"}"#,
                "allow:default/details-viewer",
            ),
            (
                r#"{"port": 9081, "principal": "cluster.local/ns/default/sa/bookinfo-reviews"}"#,
                "deny:",
            ),
        ],
    );
}

#[test]
fn task_explicit_deny() {
    // deny-method-get with `x-token` notValues admin, plus allow-path-ip.
    let policies = r#"[
        {"name": "foo/deny-method-get", "action": "DENY", "rules": [{"to": [{"methods": ["GET"]}],
            "when": [{"key": "request.headers[x-token]", "notValues": ["admin"]}]}]},
        {"name": "foo/allow-path-ip", "rules": [{"to": [{"paths": ["/ip"]}]}]}]"#;
    run(
        "task explicit deny",
        policies,
        &[
            (r#"{"path": "/get"}"#, "deny:foo/deny-method-get"),
            (
                r#"{"path": "/ip", "headers": {"x-token": "guest"}}"#,
                "deny:foo/deny-method-get",
            ),
            (
                r#"{"path": "/ip", "headers": {"x-token": "admin"}}"#,
                "allow:foo/allow-path-ip",
            ),
            (
                r#"{"path": "/get", "headers": {"x-token": "admin"}}"#,
                "deny: reason:no_allow_matched",
            ),
            (
                r#"{"method": "POST", "path": "/ip"}"#,
                "allow:foo/allow-path-ip",
            ),
        ],
    );
}

#[test]
fn task_tcp_traffic() {
    // The ports policy, then the same with an HTTP-only field as ALLOW (the rule is ignored,
    // everything is denied) and as DENY (only the HTTP-only field is ignored).
    run(
        "task TCP: allow ports",
        r#"[{"name": "foo/tcp-policy", "rules": [{"to": [{"ports": [9000, 9001]}]}]}]"#,
        &[
            (r#"{"tcp": true, "port": 9000}"#, "allow:foo/tcp-policy"),
            (r#"{"tcp": true, "port": 9001}"#, "allow:foo/tcp-policy"),
            (
                r#"{"tcp": true, "port": 9002}"#,
                "deny: reason:no_allow_matched",
            ),
        ],
    );
    run(
        "task TCP: ALLOW with methods",
        r#"[{"name": "foo/tcp-policy", "rules": [{"to": [{"methods": ["GET"], "ports": [9000]}]}]}]"#,
        &[
            (
                r#"{"tcp": true, "port": 9000}"#,
                "deny: reason:no_allow_matched",
            ),
            (r#"{"port": 9000}"#, "allow:foo/tcp-policy"),
        ],
    );
    run(
        "task TCP: DENY with methods",
        r#"[{"name": "foo/tcp-policy", "action": "DENY", "rules": [{"to": [{"methods": ["GET"], "ports": [9000]}]}]}]"#,
        &[
            (r#"{"tcp": true, "port": 9000}"#, "deny:foo/tcp-policy"),
            (r#"{"tcp": true, "port": 9001}"#, "allow:"),
            (r#"{"port": 9000, "method": "POST"}"#, "allow:"),
        ],
    );
}

#[test]
fn concepts_plain_tcp_mongodb_and_http_only_fields() {
    // The MongoDB example, and every HTTP-only field and condition on TCP.
    run(
        "concepts: mongodb",
        r#"[{"name": "default/mongodb-policy", "rules": [{
            "from": [{"principals": ["cluster.local/ns/default/sa/bookinfo-ratings-v2"]}],
            "to": [{"ports": [27017]}]}]}]"#,
        &[
            (
                r#"{"tcp": true, "port": 27017, "principal": "cluster.local/ns/default/sa/bookinfo-ratings-v2"}"#,
                "allow:default/mongodb-policy",
            ),
            (
                r#"{"tcp": true, "port": 27017, "principal": "cluster.local/ns/default/sa/bookinfo-ratings-v1"}"#,
                "deny:",
            ),
        ],
    );
    for (field, only_http) in [
        (r#""from": [{"requestPrincipals": ["*"]}]"#, true),
        (r#""from": [{"notRequestPrincipals": ["*"]}]"#, true),
        (r#""to": [{"hosts": ["*"]}]"#, true),
        (r#""to": [{"notHosts": ["x"]}]"#, true),
        (r#""to": [{"paths": ["/a"]}]"#, true),
        (r#""to": [{"notPaths": ["/a"]}]"#, true),
        (r#""to": [{"methods": ["GET"]}]"#, true),
        (r#""to": [{"notMethods": ["GET"]}]"#, true),
        (
            r#""when": [{"key": "request.headers[x]", "values": ["a"]}]"#,
            true,
        ),
        (
            r#""when": [{"key": "request.auth.principal", "values": ["a/b"]}]"#,
            true,
        ),
        (
            r#""when": [{"key": "request.auth.audiences", "values": ["a"]}]"#,
            true,
        ),
        (
            r#""when": [{"key": "request.auth.presenter", "values": ["a"]}]"#,
            true,
        ),
        (
            r#""when": [{"key": "request.auth.claims[a]", "values": ["a"]}]"#,
            true,
        ),
        (r#""to": [{"ports": [8000]}]"#, false),
        (
            r#""when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}]"#,
            false,
        ),
        (
            r#""when": [{"key": "connection.sni", "notValues": ["x"]}]"#,
            false,
        ),
    ] {
        // An ALLOW rule with the field can never allow a TCP connection; a DENY rule loses the
        // field and so denies every connection (the rest of the rule is empty).
        let allow = format!(r#"[{{"name": "p/allow", "rules": [{{{field}}}]}}]"#);
        let deny = format!(r#"[{{"name": "p/deny", "action": "DENY", "rules": [{{{field}}}]}}]"#);
        let audit =
            format!(r#"[{{"name": "p/audit", "action": "AUDIT", "rules": [{{{field}}}]}}]"#);
        let case = format!("TCP with {field}");
        if only_http {
            run(
                &case,
                &allow,
                &[(r#"{"tcp": true}"#, "deny: reason:no_allow_matched")],
            );
            run(&case, &deny, &[(r#"{"tcp": true}"#, "deny:p/deny")]);
            run(
                &case,
                &audit,
                &[(r#"{"tcp": true}"#, "allow: audit:p/audit")],
            );
        } else {
            run(&case, &allow, &[(r#"{"tcp": true}"#, "allow:p/allow")]);
            run(&case, &deny, &[(r#"{"tcp": true}"#, "deny:p/deny")]);
        }
    }
}

#[test]
fn task_jwt_require_jwt_and_groups() {
    let policy = r#"[{"name": "foo/require-jwt", "rules": [{
        "from": [{"requestPrincipals": ["testing@secure.istio.io/testing@secure.istio.io"]}],
        "when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}]}]}]"#;
    let iss = "testing@secure.istio.io";
    run(
        "task JWT: require-jwt with groups",
        policy,
        &[
            (
                &format!(
                    r#"{{"jwt": {{"iss": "{iss}", "sub": "{iss}", "claims": {{"groups": ["group1", "group2"]}}}}}}"#
                ),
                "allow:foo/require-jwt",
            ),
            (
                &format!(
                    r#"{{"jwt": {{"iss": "{iss}", "sub": "{iss}", "claims": {{"groups": "group1"}}}}}}"#
                ),
                "allow",
            ),
            (
                &format!(
                    r#"{{"jwt": {{"iss": "{iss}", "sub": "{iss}", "claims": {{"groups": ["group2"]}}}}}}"#
                ),
                "deny:",
            ),
            (
                &format!(r#"{{"jwt": {{"iss": "{iss}", "sub": "{iss}"}}}}"#),
                "deny:",
            ),
            (
                &format!(
                    r#"{{"jwt": {{"iss": "{iss}", "sub": "other", "claims": {{"groups": ["group1"]}}}}}}"#
                ),
                "deny:",
            ),
            (r#"{}"#, "deny:"),
        ],
    );
}

#[test]
fn task_ingress_ip_allow_and_deny_lists() {
    // ipBlocks is the peer; remoteIpBlocks the original client (X-Forwarded-For).
    run(
        "task ingress: ipBlocks ALLOW",
        r#"[{"name": "istio-system/ingress-policy", "rules": [{"from": [{"ipBlocks": ["1.2.3.4", "5.6.7.0/24"]}]}]}]"#,
        &[
            (
                r#"{"sourceIp": "1.2.3.4"}"#,
                "allow:istio-system/ingress-policy",
            ),
            (r#"{"sourceIp": "5.6.7.200"}"#, "allow"),
            (r#"{"sourceIp": "5.6.8.1", "remoteIp": "1.2.3.4"}"#, "deny:"),
            (r#"{"sourceIp": "::ffff:1.2.3.4"}"#, "allow"),
        ],
    );
    run(
        "task ingress: remoteIpBlocks DENY",
        r#"[{"name": "istio-system/ingress-policy", "action": "DENY", "rules": [{"from": [{"remoteIpBlocks": ["1.2.3.4", "5.6.7.0/24"]}]}]}]"#,
        &[
            (
                r#"{"sourceIp": "10.0.0.1", "remoteIp": "5.6.7.9"}"#,
                "deny:istio-system/ingress-policy",
            ),
            (
                r#"{"sourceIp": "1.2.3.4", "remoteIp": "9.9.9.9"}"#,
                "allow:",
            ),
        ],
    );
}

#[test]
fn task_dry_run_deny_path_headers() {
    let policies = r#"[{"name": "foo/deny-path-headers", "action": "DENY", "dryRun": true,
        "rules": [{"to": [{"paths": ["/headers"]}]}]}]"#;
    run(
        "task dry run: deny-path-headers",
        policies,
        &[
            (
                r#"{"path": "/headers"}"#,
                "allow: reason:no_policy shadow:deny:foo/deny-path-headers",
            ),
            (r#"{"path": "/get"}"#, "allow: shadow:allow:"),
        ],
    );
    // A dry-run ALLOW next to an enforced ALLOW: the shadow verdict counts both.
    let policies = r#"[{"name": "foo/allow-get", "rules": [{"to": [{"methods": ["GET"]}]}]},
        {"name": "foo/allow-post-dry", "dryRun": true, "rules": [{"to": [{"methods": ["POST"]}]}]},
        {"name": "foo/deny-put-dry", "action": "DENY", "dryRun": true, "rules": [{"to": [{"methods": ["PUT"]}]}]}]"#;
    run(
        "dry run: ALLOW and DENY shadows",
        policies,
        &[
            (
                r#"{"method": "GET"}"#,
                "allow:foo/allow-get shadow:allow:foo/allow-get",
            ),
            (
                r#"{"method": "POST"}"#,
                "deny: shadow:allow:foo/allow-post-dry",
            ),
            (
                r#"{"method": "PUT"}"#,
                "deny: reason:no_allow_matched shadow:deny:foo/deny-put-dry",
            ),
            (r#"{"method": "DELETE"}"#, "deny: shadow:deny:"),
        ],
    );
    // A dry-run ALLOW alone changes nothing enforced, but the shadow says "allow-list".
    run(
        "dry run: ALLOW alone",
        r#"[{"name": "foo/only-get", "dryRun": true, "rules": [{"to": [{"methods": ["GET"]}]}]}]"#,
        &[
            (
                r#"{"method": "POST"}"#,
                "allow: reason:no_policy shadow:deny: audit:",
            ),
            (r#"{"method": "GET"}"#, "allow: shadow:allow:foo/only-get"),
        ],
    );
}

#[test]
fn deny_is_evaluated_before_allow_and_first_policy_reported() {
    let policies = r#"[
        {"name": "a/allow-sleep", "rules": [{"from": [{"principals": ["cluster.local/ns/default/sa/sleep"]}]}]},
        {"name": "a/deny-admin", "action": "DENY", "rules": [{"to": [{"paths": ["/admin*"]}]}]},
        {"name": "a/deny-admin-again", "action": "DENY", "rules": [{"to": [{"paths": ["/admin"]}]}]},
        {"name": "a/allow-all-get", "rules": [{"to": [{"methods": ["GET"]}]}]}]"#;
    run(
        "DENY before ALLOW",
        policies,
        &[
            (
                &format!(r#"{{"principal": "{SLEEP}", "path": "/admin"}}"#),
                "deny:a/deny-admin",
            ),
            (
                &format!(r#"{{"principal": "{SLEEP}", "path": "/x"}}"#),
                "allow:a/allow-sleep",
            ),
            (r#"{"path": "/x"}"#, "allow:a/allow-all-get"),
            (r#"{"path": "/x", "method": "POST"}"#, "deny:"),
        ],
    );
}
