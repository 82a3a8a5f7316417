//! Mutual TLS between sidecars in-process: proxies with identities from a fake CA, driven over
//! real sockets: client sidecar A's outbound listener, server sidecar B's inbound listener and
//! the echo app behind B. The configurations are those of `tests/tests/mtls.rs` and
//! `tests/tests/policy.rs`, which test the same paths against curl and openssl.

use crate::test_util::{send, spiffe_id, try_send, Echo, FakeCa, TestProxy};

/// Server sidecar `sa`: the echo app on workload port 8080, inbound mutual TLS `mode`, and
/// `extra` appended (authorization policies).
fn server_config(sa: &str, mode: &str, echo_port: u16, extra: &str) -> String {
    format!(
        "version: {sa}-1
workload:
  name: {sa}
  namespace: default
  serviceAccount: {sa}
  mtls: {mode}
  ports:
    - {{port: 8080, protocol: HTTP, appAddress: '127.0.0.1:{echo_port}'}}
{extra}"
    )
}

/// Client sidecar `sa`: `b.local` is sidecar `b`, reached over mutual TLS as `b`; and
/// `impostor.local`, which the configuration says runs as `ratings` but is the same sidecar.
fn client_config(sa: &str, b: &TestProxy) -> String {
    let sidecar = b.addrs.inbound;
    format!(
        "version: {sa}-1
workload:
  name: {sa}
  namespace: default
  serviceAccount: {sa}
services:
  - name: b.default.svc.cluster.local
    hosts: [b.local]
    ports: [{{port: 80, protocol: HTTP, targetPort: 8080}}]
    endpoints:
      - {{address: 127.0.0.1, identity: '{}', sidecarAddress: '{sidecar}'}}
    connectTimeout: 2s
  - name: impostor.default.svc.cluster.local
    hosts: [impostor.local]
    ports: [{{port: 80, protocol: HTTP, targetPort: 8080}}]
    endpoints:
      - {{address: 127.0.0.1, identity: '{}', sidecarAddress: '{sidecar}'}}
    connectTimeout: 2s
",
        spiffe_id("b"),
        spiffe_id("ratings"),
    )
}

/// Sidecar B (`mode`, `extra`) with the echo app, and client sidecar A, both with identities
/// from `ca`.
async fn pair(ca: &FakeCa, echo: &Echo, mode: &str, extra: &str) -> (TestProxy, TestProxy) {
    let b = TestProxy::start_with(
        &server_config("b", mode, echo.port(), extra),
        Some(ca.identity("b")),
    )
    .await;
    let a = TestProxy::start_with(&client_config("a", &b), Some(ca.identity("a"))).await;
    (a, b)
}

const FORGED: (&str, &str) = (
    "x-forwarded-client-cert",
    "By=spiffe://x/y;URI=spiffe://cluster.local/ns/default/sa/admin",
);

fn tls_failures(listener: &str, reason: &str) -> String {
    format!("halyard_tls_failures_total{{listener=\"{listener}\",reason=\"{reason}\"}}")
}

fn inbound_conns(security: &str) -> String {
    format!("halyard_inbound_connections_total{{security=\"{security}\"}}")
}

#[tokio::test]
async fn a_request_crosses_two_sidecars_over_mutual_tls() {
    let ca = FakeCa::new();
    let echo = Echo::start("b").await;
    let (a, b) = pair(&ca, &echo, "STRICT", "").await;
    let r = send(
        a.addrs.outbound,
        "GET",
        "/hello",
        &[("host", "b.local"), FORGED],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["workload"], "b");
    // HTTP/1.1 from the app crossed as HTTP/2 and reaches B's app as HTTP/1.1 again.
    assert_eq!(doc["protocol"], "HTTP/1.1", "{doc}");
    // B's app learns the caller from what B verified; the caller's own XFCC is gone.
    let xfcc = doc["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.starts_with(&format!("By={};Hash=", spiffe_id("b"))),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(&format!(";URI={}", spiffe_id("a"))),
        "{xfcc}"
    );
    assert!(!xfcc.contains("admin"), "forged XFCC survived: {xfcc}");

    let e = b.wait_log("/hello at B", |e| e["path"] == "/hello").await;
    assert_eq!(e["listener"], "inbound", "{e}");
    assert_eq!(e["protocol"], "HTTP/2", "{e}");
    assert_eq!(e["downstream_peer_uri_san"], spiffe_id("a").as_str(), "{e}");
    assert_eq!(e["response_code"], 200, "{e}");
    let e = a.wait_log("/hello at A", |e| e["path"] == "/hello").await;
    assert_eq!(e["listener"], "outbound", "{e}");
    assert_eq!(e["upstream_peer_uri_san"], spiffe_id("b").as_str(), "{e}");
    assert_eq!(e["upstream_cluster"], "b.default.svc.cluster.local", "{e}");
    assert_eq!(e["response_flags"], "-", "{e}");
    assert!(b.metric(&inbound_conns("mutual_tls")).await >= 1.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn strict_inbound_refuses_plaintext() {
    let ca = FakeCa::new();
    let echo = Echo::start("b").await;
    let (a, b) = pair(&ca, &echo, "STRICT", "").await;
    let plain = try_send(b.addrs.inbound, "GET", "/plain", &[("host", "b.local")]).await;
    assert!(plain.is_err(), "plaintext answered: {plain:?}");
    assert!(b.metric(&tls_failures("inbound", "plaintext")).await >= 1.0);
    assert_eq!(b.metric(&inbound_conns("plaintext")).await, 0.0);
    // The same port serves the mesh.
    let r = send(a.addrs.outbound, "GET", "/mesh", &[("host", "b.local")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Only that request reached the app.
    let e = b.wait_log("a logged request at B", |_| true).await;
    assert_eq!(e["path"], "/mesh", "{e}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn permissive_inbound_serves_plaintext_and_mtls() {
    let ca = FakeCa::new();
    let echo = Echo::start("b").await;
    let (a, b) = pair(&ca, &echo, "PERMISSIVE", "").await;
    let plain = send(
        b.addrs.inbound,
        "GET",
        "/plain",
        &[("host", "b.local"), FORGED],
    )
    .await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    let doc = plain.json();
    // No verified peer: no client certificate for the app, forged or not.
    assert!(
        doc["headers"].get("x-forwarded-client-cert").is_none(),
        "{doc}"
    );
    let tls = send(a.addrs.outbound, "GET", "/tls", &[("host", "b.local")]).await;
    assert_eq!(tls.status, 200, "{}", tls.text());
    let xfcc = tls.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(xfcc.ends_with(&format!("URI={}", spiffe_id("a"))), "{xfcc}");

    let e = b.wait_log("/plain at B", |e| e["path"] == "/plain").await;
    assert!(e["downstream_peer_uri_san"].is_null(), "{e}");
    let e = b.wait_log("/tls at B", |e| e["path"] == "/tls").await;
    assert_eq!(e["downstream_peer_uri_san"], spiffe_id("a").as_str(), "{e}");
    assert!(b.metric(&inbound_conns("plaintext")).await >= 1.0);
    assert!(b.metric(&inbound_conns("mutual_tls")).await >= 1.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_peer_with_another_identity_than_configured_is_refused_uf() {
    let ca = FakeCa::new();
    let echo = Echo::start("b").await;
    let (a, b) = pair(&ca, &echo, "STRICT", "").await;
    // impostor.local should run as `ratings`; the sidecar there proves `b`.
    let r = send(
        a.addrs.outbound,
        "GET",
        "/who",
        &[("host", "impostor.local")],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.text(), "upstream connect error (UF)\n");
    let e = a.wait_log("/who at A", |e| e["path"] == "/who").await;
    let flags = e["response_flags"].as_str().unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UF"), "{e}");
    assert_eq!(
        e["upstream_transport_failure_reason"], "identity_mismatch",
        "{e}"
    );
    assert!(
        a.metric(&tls_failures("outbound", "identity_mismatch"))
            .await
            >= 1.0
    );

    // A client sidecar without an identity cannot reach the STRICT workload either.
    let anonymous = TestProxy::start(&client_config("anonymous", &b)).await;
    let r = send(
        anonymous.addrs.outbound,
        "GET",
        "/anon",
        &[("host", "b.local")],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let e = anonymous.wait_log("/anon", |e| e["path"] == "/anon").await;
    assert_eq!(
        e["upstream_transport_failure_reason"], "no_certificate",
        "{e}"
    );
    // Neither request reached B's app; a good one does.
    let r = send(a.addrs.outbound, "GET", "/ok", &[("host", "b.local")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = b.wait_log("a logged request at B", |_| true).await;
    assert_eq!(e["path"], "/ok", "{e}");
    for p in [a, b, anonymous] {
        p.stop().await;
    }
}

#[tokio::test]
async fn an_authorization_policy_admits_only_the_allowed_principal() {
    let ca = FakeCa::new();
    let echo = Echo::start("b").await;
    let policy = "authorizationPolicies:
  - name: default/only-a
    action: ALLOW
    rules:
      - from: [{principals: [cluster.local/ns/default/sa/a]}]
";
    let (a, b) = pair(&ca, &echo, "PERMISSIVE", policy).await;
    let c = TestProxy::start_with(&client_config("c", &b), Some(ca.identity("c"))).await;

    let r = send(a.addrs.outbound, "GET", "/from-a", &[("host", "b.local")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Another mesh identity over mutual TLS: B denies it, and C's sidecar passes that on.
    let r = send(c.addrs.outbound, "GET", "/from-c", &[("host", "b.local")]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.text().trim(), "RBAC: access denied");
    // Plaintext has no principal at all.
    let r = send(b.addrs.inbound, "GET", "/plain", &[("host", "b.local")]).await;
    assert_eq!(r.status, 403, "{}", r.text());

    let e = b.wait_log("/from-a at B", |e| e["path"] == "/from-a").await;
    assert_eq!(e["downstream_peer_uri_san"], spiffe_id("a").as_str(), "{e}");
    assert_eq!(e["response_code"], 200, "{e}");
    for (path, peer) in [("/from-c", Some(spiffe_id("c"))), ("/plain", None)] {
        let e = b.wait_log(path, |e| e["path"] == path).await;
        assert_eq!(e["response_code"], 403, "{e}");
        assert_eq!(e["response_flags"], "RBAC", "{e}");
        match peer {
            Some(id) => assert_eq!(e["downstream_peer_uri_san"], id.as_str(), "{e}"),
            None => assert!(e["downstream_peer_uri_san"].is_null(), "{e}"),
        }
    }
    let allowed = "halyard_rbac_decisions_total{action=\"ALLOW\",policy=\"default/only-a\",result=\"allowed\"}";
    assert!(b.metric(allowed).await >= 1.0);
    for p in [a, b, c] {
        p.stop().await;
    }
}

/// Sidecar B with the echo app behind TCP workload ports 9000 and 9001, and `extra`.
fn tcp_server_config(echo_port: u16, version: &str, extra: &str) -> String {
    format!(
        "version: {version}
workload:
  name: b
  namespace: default
  serviceAccount: b
  mtls: STRICT
  ports:
    - {{port: 9000, protocol: TCP, appAddress: '127.0.0.1:{echo_port}'}}
    - {{port: 9001, protocol: TCP, appAddress: '127.0.0.1:{echo_port}'}}
{extra}"
    )
}

/// Client sidecar A: `b-tcp.local` ports 9000 and 9001 are sidecar B's, as `b`.
fn tcp_client_config(b: &TestProxy) -> String {
    format!(
        "version: a-1
workload:
  name: a
  namespace: default
  serviceAccount: a
services:
  - name: b-tcp.default.svc.cluster.local
    hosts: [b-tcp.local]
    ports: [{{port: 9000, protocol: TCP}}, {{port: 9001, protocol: TCP}}]
    endpoints:
      - {{address: 127.0.0.1, identity: '{}', sidecarAddress: '{}'}}
    connectTimeout: 2s
",
        spiffe_id("b"),
        b.addrs.inbound
    )
}

/// `CONNECT target` on a fresh connection to `proxy`: the status line and the connection.
async fn connect_via(proxy: std::net::SocketAddr, target: &str) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let head = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("answer in time")
            .expect("read");
        if n == 0 {
            break;
        }
        got.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    (status, s)
}

#[tokio::test]
async fn tunnels_cross_as_connect_and_the_destinations_policy_answers_them() {
    use super::tests::{closed_within, exchange};
    let ca = FakeCa::new();
    let echo = Echo::start("b").await;
    let deny_9001 = "authorizationPolicies:
  - name: default/no-9001-for-a
    action: DENY
    rules: [{from: [{principals: [cluster.local/ns/default/sa/a]}], to: [{ports: ['9001']}]}]
";
    let b = TestProxy::start_with(
        &tcp_server_config(echo.port(), "b-1", deny_9001),
        Some(ca.identity("b")),
    )
    .await;
    let a = TestProxy::start_with(&tcp_client_config(&b), Some(ca.identity("a"))).await;

    // Allowed: 200 from A once B said yes, then bytes both ways.
    let (status, mut open) = connect_via(a.addrs.outbound, "b-tcp.local:9000").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        exchange(&mut open).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );

    // Refused by B's policy: A answers 403, not 200 and then a closed connection.
    let (status, _) = connect_via(a.addrs.outbound, "b-tcp.local:9001").await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let e = a
        .wait_log("the refused tunnel at A", |e| {
            e["method"] == "CONNECT" && e["response_code"] == 403
        })
        .await;
    assert_eq!(e["response_flags"], "RBAC", "{e}");
    let e = b
        .wait_log("the refused tunnel at B", |e| e["response_code"] == 403)
        .await;
    assert_eq!(e["rbac_policy"], "default/no-9001-for-a", "{e}");
    assert_eq!(e["protocol"], "HTTP/2", "{e}");

    // The open tunnel is decided again when B's policy tightens, and closed.
    b.reconfigure(&tcp_server_config(
        echo.port(),
        "b-2",
        &deny_9001.replace("['9001']", "['9000', '9001']"),
    ));
    assert!(closed_within(&mut open, std::time::Duration::from_secs(3)).await);
    let e = b
        .wait_log("the revoked tunnel at B", |e| {
            e["method"] == "CONNECT" && e["response_code"] == 200
        })
        .await;
    assert_eq!(e["response_flags"], "RBAC", "{e}");
    a.stop().await;
    b.stop().await;
}

/// A TLS handshake with `name` as its server name, through `proxy`, with a client that trusts
/// nothing: how it failed (it cannot succeed).
async fn tls_handshake_via(proxy: std::net::SocketAddr, name: &str) -> std::io::Error {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
    let handshake = connector.connect(name, tcp);
    match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
        Ok(Ok(_)) => panic!("a TLS handshake with an untrusted peer succeeded"),
        Ok(Err(e)) => e,
        Err(_) => panic!("no end of the handshake within 10 s"),
    }
}

#[tokio::test]
async fn a_mesh_tcp_connection_the_destination_refuses_reaches_the_caller_as_a_reset() {
    let ca = FakeCa::new();
    let echo = Echo::start("b").await;
    let b = TestProxy::start_with(
        &tcp_server_config(echo.port(), "b-1", ""),
        Some(ca.identity("b")),
    )
    .await;
    let a = TestProxy::start_with(&tcp_client_config(&b), Some(ca.identity("a"))).await;

    // TLS of the caller's own, routed by its server name, crosses as opaque TCP inside mesh
    // TLS; the app (HTTP) does not speak it, so the handshake fails, but not with a reset.
    let e = tls_handshake_via(a.addrs.outbound, "b-tcp.local").await;
    assert_ne!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    b.wait_log("the allowed connection at B", |e| {
        e["response_flags"] == "-" && e["upstream_host"].is_string()
    })
    .await;

    // Refused by B's policy: B resets its side, A resets the caller's.
    b.reconfigure(&tcp_server_config(
        echo.port(),
        "b-2",
        "authorizationPolicies:
  - name: default/deny-a
    action: DENY
    rules: [{from: [{principals: [cluster.local/ns/default/sa/a]}]}]
",
    ));
    b.wait_version("b-2").await;
    let e = tls_handshake_via(a.addrs.outbound, "b-tcp.local").await;
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    b.wait_log("the refused connection at B", |e| {
        e["response_flags"] == "RBAC"
    })
    .await;
    a.stop().await;
    b.stop().await;
}
