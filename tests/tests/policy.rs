//! Authorization (Istio AuthorizationPolicy) and JWT authentication (RequestAuthentication)
//! through the proxy's inbound listener, with callers and tokens this project did not make:
//! curl, raw sockets, and tokens signed by PyJWT with keys served by an OpenID Connect issuer
//! (`tests/peers/jwt_issuer.py`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use halyard_tests::*;

/// A proxy for workload `demo/backend` serving `app_port` with `policies` (YAML appended to
/// the config: `authorizationPolicies:` and `requestAuthentications:`).
fn backend(app_port: u16, protocol: &str, policies: &str) -> Proxy {
    Proxy::start(&format!(
        "version: policy-1
workload:
  name: backend
  namespace: demo
  ports:
    - port: 8080
      protocol: {protocol}
      appAddress: 127.0.0.1:{app_port}
{policies}"
    ))
}

fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Reply {
    http(proxy.inbound, "GET", path, headers, b"").expect("request to the proxy")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn jwt_tokens_from_pyjwt_are_verified_and_feed_authorization() {
    let issuer = Issuer::start();
    let echo = Echo::start("backend");
    let iss = issuer.url();
    let proxy = backend(
        echo.port(),
        "HTTP",
        &format!(
            r#"requestAuthentications:
  - name: demo/jwt
    jwtRules:
      # Keys found by OpenID Connect discovery from the issuer.
      - issuer: "{iss}"
        audiences: [backend]
        outputPayloadToHeader: x-jwt-payload
        outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
      # Keys at an explicit URI, the token in a header of its own, kept for the app.
      - issuer: https://partner.example
        jwksUri: "{iss}/jwks"
        fromHeaders: [{{name: x-partner-token}}]
        forwardOriginalToken: true
authorizationPolicies:
  - name: demo/require-jwt
    action: ALLOW
    rules:
      - from: [{{requestPrincipals: ["*"]}}]
      - to: [{{paths: ["/public/*"]}}]
  - name: demo/admins
    action: DENY
    rules:
      - to: [{{paths: ["/admin"]}}]
        when: [{{key: "request.auth.claims[groups]", notValues: [admins]}}]
"#
        ),
    );

    // No token: authentication passes it on, authorization decides.
    let r = get(&proxy, "/public/info", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&proxy, "/data", &[]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.text().trim(), "RBAC: access denied");
    // Claim headers cannot be forged by a caller without a token.
    let r = get(&proxy, "/public/x", &[("x-jwt-sub", "forged")]);
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-jwt-sub").is_none(),
        "{}",
        r.text()
    );

    // Every algorithm Istio accepts, signed by PyJWT.
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
    ] {
        let token = issuer.token(&format!("alg={alg}&sub=alice&aud=backend"));
        let r = get(&proxy, "/data", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        let h = &r.json()["headers"];
        assert_eq!(h["x-jwt-sub"], "alice", "{alg}: {h}");
        assert!(h.get("authorization").is_none(), "token forwarded: {h}");
        let payload = h["x-jwt-payload"].as_str().unwrap_or_default();
        let decoded = base64url_decode(payload);
        let claims: serde_json::Value = serde_json::from_slice(&decoded).expect("payload JSON");
        assert_eq!(claims["iss"], iss.as_str());
    }
    let stats = issuer.stats();
    assert_eq!(stats["discovery_fetches"], 1, "{stats}");

    // Token in the `access_token` query parameter: accepted and not passed to the app.
    let token = issuer.token("sub=bob&aud=backend");
    let r = get(&proxy, &format!("/data?a=1&access_token={token}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/data?a=1");

    // Invalid tokens are refused with 401 and a Bearer challenge, whatever the path.
    let tampered = {
        let t = issuer.token("sub=alice&aud=backend");
        let (head, sig) = t.rsplit_once('.').expect("three parts");
        let mut sig = sig.as_bytes().to_vec();
        sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
        format!("{head}.{}", String::from_utf8(sig).expect("ascii"))
    };
    for (what, token) in [
        ("expired", issuer.token("aud=backend&exp=-120")),
        ("not yet valid", issuer.token("aud=backend&nbf=600")),
        ("wrong audience", issuer.token("aud=someone-else")),
        (
            "unknown issuer",
            issuer.token("aud=backend&iss=https://evil.example"),
        ),
        ("tampered", tampered),
        ("garbage", "not.a.jwt".to_string()),
    ] {
        let r = get(&proxy, "/public/x", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
            "{what}: {challenge}"
        );
    }
    // Within the 60 s clock skew an expired token still passes.
    let r = get(
        &proxy,
        "/data",
        &[(
            "authorization",
            &bearer(&issuer.token("aud=backend&exp=-20")),
        )],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Nested claims decide: the DENY applies unless `groups` contains `admins`.
    let admin = issuer.token(r#"aud=backend&claims={"groups":["dev","admins"]}"#);
    let dev = issuer.token(r#"aud=backend&claims={"groups":["dev"]}"#);
    assert_eq!(
        get(&proxy, "/admin", &[("authorization", &bearer(&admin))]).status,
        200
    );
    assert_eq!(
        get(&proxy, "/admin", &[("authorization", &bearer(&dev))]).status,
        403
    );

    // The second rule: explicit jwksUri, custom header, token forwarded.
    let token = issuer.token("alg=ES256&iss=https://partner.example&sub=p1");
    let r = get(&proxy, "/data", &[("x-partner-token", &token)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-partner-token"], token.as_str());

    let metrics = proxy.admin("GET", "/stats/prometheus").text();
    assert!(
        metrics.contains(r#"halyard_rbac_decisions_total{action="ALLOW",policy="demo/require-jwt",result="allowed"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"halyard_rbac_decisions_total{action="DENY",policy="demo/admins",result="denied"}"#
        ),
        "{metrics}"
    );
    let denied = proxy.wait_log("a denied request", |e| {
        e["path"] == "/data" && e["response_code"] == 403
    });
    assert_eq!(denied["response_flags"], "RBAC", "{denied}");
}

#[test]
fn jwks_key_rotation_while_traffic_flows() {
    let issuer = Issuer::start();
    let echo = Echo::start("backend");
    let proxy = backend(
        echo.port(),
        "HTTP",
        &format!(
            r#"requestAuthentications:
  - name: demo/jwt
    jwtRules: [{{issuer: "{}", jwksUri: "{}/jwks"}}]
authorizationPolicies:
  - name: demo/require-jwt
    rules: [{{from: [{{requestPrincipals: ["*"]}}]}}]
"#,
            issuer.url(),
            issuer.url()
        ),
    );
    let old = issuer.token("alg=RS256&sub=before");
    assert_eq!(
        get(&proxy, "/", &[("authorization", &bearer(&old))]).status,
        200
    );

    // Traffic with fresh tokens the whole time; halfway the issuer rotates to new keys and
    // drops the old ones. The proxy sees an unknown key id and refetches: nothing fails.
    let started = Instant::now();
    let (mut ok, mut failed, mut rotated) = (0, Vec::new(), false);
    while started.elapsed() < Duration::from_secs(4) {
        if !rotated && started.elapsed() > Duration::from_secs(2) {
            issuer.rotate(false);
            rotated = true;
        }
        let alg = ["RS256", "ES256", "EdDSA"][ok % 3];
        let token = issuer.token(&format!("alg={alg}&sub=u{ok}"));
        let r = get(&proxy, "/", &[("authorization", &bearer(&token))]);
        if r.status == 200 {
            ok += 1;
        } else {
            failed.push((r.status, r.text()));
        }
    }
    assert!(failed.is_empty(), "{} ok, failed: {failed:?}", ok);
    assert!(ok > 20, "only {ok} requests");
    // A token signed with a key the issuer no longer publishes is refused now.
    let r = get(&proxy, "/", &[("authorization", &bearer(&old))]);
    assert_eq!(r.status, 401, "{}", r.text());
    let fetches = issuer.stats()["jwks_fetches"].as_u64().unwrap_or(0);
    assert!(
        (2..=6).contains(&fetches),
        "JWKS fetched {fetches} times (cached, refetched on rotation)"
    );
}

#[test]
fn path_normalisation_defeats_bypass_attempts() {
    let echo = Echo::start("backend");
    let proxy = backend(
        echo.port(),
        "HTTP",
        r#"authorizationPolicies:
  - name: demo/no-admin
    action: DENY
    rules: [{to: [{paths: ["/admin", "/admin/*"]}]}]
"#,
    );
    for path in [
        "/admin",
        "/admin/",
        "/admin/users",
        "/./admin",
        "//admin",
        "/%2Fadmin",
        "/%2fadmin/users",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E%2Fadmin",
        "/a/b/../../admin",
        "/../admin",
        "/%61dmin",
        "/admin%2Fusers",
        "/admin?x=1",
        "/admin#frag",
    ] {
        let out = curl(&["--path-as-is", &url(proxy.inbound, path)]);
        assert_eq!(out.status, 403, "{path}: {out:?}");
    }
    for path in ["/administrator", "/public/admin", "/adm/in"] {
        let out = curl(&["--path-as-is", &url(proxy.inbound, path)]);
        assert_eq!(out.status, 200, "{path}: {out:?}");
    }
    // What cannot be normalised safely is refused outright.
    let r = get(&proxy, "/admin%zz", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = get(&proxy, "/a%00b", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
}

/// Sends an HTTP request over a raw TCP connection from `source`; the response, or what the
/// proxy did instead (closed without a byte).
fn raw_exchange(source: [u8; 4], to: SocketAddr) -> Result<String, String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::from((source, 0)).into())
        .map_err(|e| e.to_string())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /raw HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) if buf.is_empty() => Err("closed".into()),
        Ok(_) => Ok(String::from_utf8_lossy(&buf).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Err("closed".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn tcp_connections_are_authorized_when_they_open() {
    let echo = Echo::start("backend");
    // L4 attributes decide TCP: the DENY by source address applies; the ALLOW on the port
    // admits everyone else.
    let l4 = backend(
        echo.port(),
        "TCP",
        r#"authorizationPolicies:
  - name: demo/block-127-0-0-2
    action: DENY
    rules: [{from: [{ipBlocks: ["127.0.0.2/32"]}]}]
  - name: demo/allow-port
    rules: [{to: [{ports: [8080]}]}]
"#,
    );
    let ok = raw_exchange([127, 0, 0, 1], l4.inbound).expect("allowed connection");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(
        raw_exchange([127, 0, 0, 2], l4.inbound),
        Err("closed".into())
    );

    // An ALLOW rule that needs HTTP attributes can never match a TCP connection: denied.
    let http_only = backend(
        echo.port(),
        "TCP",
        r#"authorizationPolicies:
  - name: demo/get-only
    rules: [{to: [{methods: [GET]}]}]
"#,
    );
    assert_eq!(
        raw_exchange([127, 0, 0, 1], http_only.inbound),
        Err("closed".into())
    );
    let metrics = http_only.admin("GET", "/stats/prometheus").text();
    assert!(
        metrics.contains(
            r#"halyard_rbac_decisions_total{action="ALLOW",policy="none",result="denied"}"#
        ),
        "{metrics}"
    );
    let log = http_only.wait_log("the denied connection", |e| e["response_flags"] == "RBAC");
    assert_eq!(log["listener"], "inbound", "{log}");
}

#[test]
fn dry_run_policies_report_without_enforcing() {
    let echo = Echo::start("backend");
    let proxy = backend(
        echo.port(),
        "HTTP",
        r#"authorizationPolicies:
  - name: demo/deny-delete-trial
    action: DENY
    dryRun: true
    rules: [{to: [{methods: [DELETE]}]}]
  - name: demo/audit-posts
    action: AUDIT
    rules: [{to: [{methods: [POST]}]}]
"#,
    );
    let r = http(proxy.inbound, "DELETE", "/thing", &[], b"").expect("DELETE");
    assert_eq!(r.status, 200, "dry-run must not enforce: {}", r.text());
    let r = http(proxy.inbound, "POST", "/thing", &[], b"x").expect("POST");
    assert_eq!(r.status, 200);
    let metrics = proxy.admin("GET", "/stats/prometheus").text();
    assert!(
        metrics.contains(r#"halyard_rbac_decisions_total{action="DENY",policy="demo/deny-delete-trial",result="shadow_denied"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"halyard_rbac_decisions_total{action="AUDIT",policy="demo/audit-posts",result="audited"}"#),
        "{metrics}"
    );
}

fn base64url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("payload header is not base64url ({e}): {s}"))
}
