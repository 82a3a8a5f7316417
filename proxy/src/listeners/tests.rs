//! The listeners in-process: a whole proxy on port 0 with the echo app behind it, driven over
//! real sockets with hyper's client, each case as a user would configure and call it.

use crate::test_util::{dead_port, echo_config, get, send, Echo, TestProxy};

#[tokio::test]
async fn outbound_http1_adds_mesh_headers_and_logs() {
    let echo = Echo::start("echo-a").await;
    let proxy = TestProxy::start(&echo_config(echo.port(), "")).await;
    let r = send(
        proxy.addrs.outbound,
        "GET",
        "/hello?x=1",
        &[("host", "echo.local"), ("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["workload"], "echo-a");
    assert_eq!(doc["path"], "/hello?x=1");
    let h = &doc["headers"];
    assert_eq!(h["host"], "echo.local");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    let id = h["x-request-id"].as_str().unwrap_or_default().to_string();
    assert_eq!(id.len(), 36, "{h}");

    let e = proxy
        .wait_log("GET /hello", |e| e["path"] == "/hello?x=1")
        .await;
    assert_eq!(e["response_code"], 200);
    assert_eq!(e["response_flags"], "-");
    assert_eq!(e["listener"], "outbound");
    assert_eq!(e["authority"], "echo.local");
    assert_eq!(e["upstream_cluster"], "echo.default.svc.cluster.local");
    assert_eq!(e["upstream_host"], format!("127.0.0.1:{}", echo.port()));
    assert_eq!(e["request_id"], id.as_str());

    // A request id from the client is kept.
    let r = send(
        proxy.addrs.outbound,
        "GET",
        "/",
        &[("host", "echo.local"), ("x-request-id", "my-id-1")],
    )
    .await;
    assert_eq!(r.json()["headers"]["x-request-id"], "my-id-1");
    proxy.stop().await;
}

#[tokio::test]
async fn hop_by_hop_and_mesh_only_headers_do_not_pass() {
    let echo = Echo::start("echo-hop").await;
    let proxy = TestProxy::start(&echo_config(echo.port(), "")).await;
    let r = send(
        proxy.addrs.outbound,
        "GET",
        "/hop",
        &[
            ("host", "echo.local"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("x-kept", "yes"),
            ("connection", "x-secret-hop, keep-alive"),
            // An app cannot speak for a mesh peer.
            ("x-envoy-peer-metadata", "Cg0KB05BTUVTUEFDRRICGgA="),
            ("x-envoy-peer-metadata-id", "sidecar~1.2.3.4~x~y"),
            ("halyard-orig-proto", "HTTP/1.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "x-envoy-peer-metadata",
        "x-envoy-peer-metadata-id",
        "halyard-orig-proto",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-kept"], "yes");
    proxy.stop().await;
}

#[tokio::test]
async fn failures_map_to_status_and_flags() {
    let echo = Echo::start("echo-slow").await;
    let extra = format!(
        "  - name: down.default.svc.cluster.local
    hosts: [down.local]
    ports: [{{port: 80, protocol: HTTP, targetPort: {}}}]
    endpoints: [{{address: 127.0.0.1}}]
    connectTimeout: 1s
  - name: empty.default.svc.cluster.local
    hosts: [empty.local]
    ports: [{{port: 80, protocol: HTTP}}]
virtualHosts:
  - name: slow
    hosts: [echo.local]
    routes:
      - name: slow-route
        match: [{{uri: {{prefix: /slow}}}}]
        route: {{service: echo.default.svc.cluster.local}}
        timeout: 300ms
      - name: default
        route: {{service: echo.default.svc.cluster.local}}
outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
",
        dead_port()
    );
    let proxy = TestProxy::start(&echo_config(echo.port(), &extra)).await;
    let out = proxy.addrs.outbound;

    let r = get(out, "down.local", "/d").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.text(), "upstream connect error (UF)\n");
    let e = proxy.wait_log("UF", |e| e["path"] == "/d").await;
    assert_eq!(e["response_flags"], "UF,URX", "{e}");
    assert_eq!(e["upstream_request_attempt_count"], 3, "{e}");

    let start = std::time::Instant::now();
    let r = get(out, "echo.local", "/slow?delay_ms=3000").await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        took >= std::time::Duration::from_millis(250) && took < std::time::Duration::from_secs(2),
        "{took:?}"
    );
    let e = proxy
        .wait_log("UT", |e| e["path"] == "/slow?delay_ms=3000")
        .await;
    assert_eq!(e["response_flags"], "UT");
    assert_eq!(e["route_name"], "slow-route");

    // The same delay on the default route (no timeout there) succeeds.
    assert_eq!(
        get(out, "echo.local", "/fast?delay_ms=500").await.status,
        200
    );

    let r = get(out, "nowhere.local", "/n").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        proxy.wait_log("NR", |e| e["path"] == "/n").await["response_flags"],
        "NR"
    );

    let r = get(out, "empty.local", "/e").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        proxy.wait_log("UH", |e| e["path"] == "/e").await["response_flags"],
        "UH"
    );

    // A gRPC caller gets the gRPC form of the same local reply.
    let r = send(
        out,
        "POST",
        "/pkg.Svc/Call",
        &[
            ("host", "empty.local"),
            ("content-type", "application/grpc"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["grpc-status"], "14");

    // Upstream statuses pass through untouched.
    assert_eq!(get(out, "echo.local", "/x?status=418").await.status, 418);
    proxy.stop().await;
}

#[tokio::test]
async fn balancing_spreads_over_endpoints_and_skips_dead_ones() {
    let a = Echo::start("lb-a").await;
    let b = Echo::start("lb-b").await;
    let dead = dead_port();
    for lb in ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"] {
        let cfg = format!(
            "version: lb
services:
  - name: lb.default.svc.cluster.local
    hosts: [lb.local]
    ports: [{{port: 80, protocol: HTTP}}]
    loadBalancer: {lb}
    endpoints:
      - {{address: 127.0.0.1, port: {}}}
      - {{address: 127.0.0.1, port: {}}}
      - {{address: 127.0.0.1, port: {dead}}}
",
            a.port(),
            b.port()
        );
        let proxy = TestProxy::start(&cfg).await;
        let mut seen = std::collections::HashMap::new();
        for i in 0..30 {
            let r = get(proxy.addrs.outbound, "lb.local", "/").await;
            assert_eq!(r.status, 200, "{lb} request {i}: {}", r.text());
            let w = r.json()["workload"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *seen.entry(w).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "{lb}: {seen:?}");
        if lb == "ROUND_ROBIN" {
            // The dead endpoint's turns go to the next live one, so neither side starves.
            assert!(seen.values().all(|&n| n >= 8), "{lb}: {seen:?}");
        }
        proxy.stop().await;
    }
}

#[tokio::test]
async fn inbound_forwards_to_the_workload_port_and_drops_a_forged_xfcc() {
    let echo = Echo::start("app").await;
    let proxy = TestProxy::start(&echo_config(echo.port(), "")).await;
    let r = send(
        proxy.addrs.inbound,
        "GET",
        "/in",
        &[
            ("host", "app.example"),
            (
                "x-forwarded-client-cert",
                "By=spiffe://forged;URI=spiffe://forged",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["workload"], "app");
    // Plaintext has no verified peer: nothing may reach the app as its certificate.
    assert!(
        doc["headers"].get("x-forwarded-client-cert").is_none(),
        "{doc}"
    );
    let e = proxy.wait_log("inbound", |e| e["path"] == "/in").await;
    assert_eq!(e["listener"], "inbound");
    assert_eq!(e["upstream_host"], format!("127.0.0.1:{}", echo.port()));
    proxy.stop().await;
}

#[tokio::test]
async fn a_stopped_proxy_refuses_new_connections() {
    let echo = Echo::start("app").await;
    let proxy = TestProxy::start(&echo_config(echo.port(), "")).await;
    let addr = proxy.addrs.outbound;
    assert_eq!(get(addr, "echo.local", "/").await.status, 200);
    proxy.stop().await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still accepting after stop");
}

#[tokio::test]
async fn route_filters_run_after_the_proxys_own_headers() {
    let echo = Echo::start("echo-f").await;
    let extra = "virtualHosts:
  - name: echo
    hosts: [echo.local]
    routes:
      - name: teapot
        match: [{uri: {prefix: /teapot}}]
        fault: {abort: {httpStatus: 418, percent: 100}}
        route: {service: echo.default.svc.cluster.local}
      - name: grpc-abort
        match: [{uri: {prefix: /grpc}}]
        fault: {abort: {grpcStatus: 14, percent: 100}}
        route: {service: echo.default.svc.cluster.local}
      - name: headers
        route:
          service: echo.default.svc.cluster.local
          requestHeaders: {set: {x-order: dest, x-dest: d}}
        requestHeaders:
          set: {x-order: route, x-forwarded-for: 192.0.2.1, x-request-id: fixed-id}
";
    let proxy = TestProxy::start(&echo_config(echo.port(), extra)).await;
    let out = proxy.addrs.outbound;

    let r = get(out, "echo.local", "/any").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(
        h["x-order"], "route",
        "the route's set comes after the destination's"
    );
    assert_eq!(h["x-dest"], "d");
    // The route's own values win over what the proxy adds to every request.
    assert_eq!(h["x-forwarded-for"], "192.0.2.1", "{h}");
    assert_eq!(h["x-request-id"], "fixed-id", "{h}");

    let r = get(out, "echo.local", "/teapot").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "fault filter abort\n");
    let e = proxy.wait_log("FI", |e| e["path"] == "/teapot").await;
    assert_eq!(e["response_flags"], "FI");
    assert_eq!(e["route_name"], "teapot");
    assert_eq!(e["upstream_request_attempt_count"], 0, "{e}");

    let r = send(out, "GET", "/grpc", &[("host", "echo.local")]).await;
    assert_eq!(r.status, 200, "a gRPC abort is a trailers-only answer");
    assert_eq!(r.headers["grpc-status"], "14");
    assert_eq!(r.headers["content-type"], "application/grpc");
    proxy.stop().await;
}

#[tokio::test]
async fn inbound_chain_normalises_then_authorizes() {
    let echo = Echo::start("echo-p").await;
    let extra = "authorizationPolicies:
  - name: default/no-admin
    action: DENY
    rules:
      - to: [{paths: [/admin]}]
";
    let proxy = TestProxy::start(&echo_config(echo.port(), extra)).await;
    let inb = proxy.addrs.inbound;

    let r = get(inb, "app.local", "/public/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(inb, "app.local", "/public/%2e%2e//admin").await;
    assert_eq!(r.status, 403, "another spelling of /admin is /admin");
    assert_eq!(r.text(), "RBAC: access denied\n");
    let e = proxy
        .wait_log("RBAC", |e| e["path"] == "/public/%2e%2e//admin")
        .await;
    assert_eq!(e["response_flags"], "RBAC");
    assert_eq!(e["rbac_policy"], "default/no-admin", "{e}");

    let r = send(
        inb,
        "GET",
        "/admin",
        &[("host", "app.local"), ("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(r.status, 200, "gRPC callers get the gRPC form");
    assert_eq!(r.headers["grpc-status"], "7");

    let r = get(inb, "app.local", "/a%00b").await;
    assert_eq!(r.status, 400);
    let e = proxy.wait_log("DPE", |e| e["path"] == "/a%00b").await;
    assert_eq!(e["response_flags"], "DPE");

    // The app gets the path that was authorized.
    let r = get(inb, "app.local", "/public/./x/../y").await;
    assert_eq!(r.json()["path"], "/public/y");
    proxy.stop().await;
}

/// A keep-alive connection to `to` from the loopback address `from`.
pub(super) async fn open_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind((std::net::Ipv4Addr::from(from), 0).into())
        .expect("bind");
    sock.connect(to).await.expect("connect")
}

/// One HTTP/1.1 exchange on an open connection: the status line, or `None` once the
/// connection is closed.
pub(super) async fn exchange(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /kept HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head.lines().next().map(str::to_string);
            }
        }
    }
}

/// One read of `s` within `within` (`None`: nothing happened in time).
async fn read_within(
    s: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Option<std::io::Result<usize>> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    tokio::time::timeout(within, s.read(&mut buf)).await.ok()
}

/// Whether the peer closes `s` within `within` (reads return EOF or a reset).
pub(super) async fn closed_within(
    s: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> bool {
    matches!(read_within(s, within).await, Some(Ok(0) | Err(_)))
}

/// Whether the peer resets `s` (rather than ending it) within `within`.
pub(super) async fn reset_within(
    s: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> bool {
    matches!(
        read_within(s, within).await,
        Some(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset
    )
}

#[tokio::test]
async fn a_tightened_policy_closes_the_tcp_connections_it_now_denies() {
    let echo = Echo::start("echo-t").await;
    let base = format!(
        "version: tcp-1
workload:
  name: app
  namespace: default
  ports:
    - port: 9000
      protocol: TCP
      appAddress: 127.0.0.1:{}
",
        echo.port()
    );
    let proxy = TestProxy::start(&base).await;
    let inb = proxy.addrs.inbound;
    let mut kept = open_from([127, 0, 0, 1], inb).await;
    let mut cut = open_from([127, 0, 0, 2], inb).await;
    assert_eq!(
        exchange(&mut kept).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(exchange(&mut cut).await.as_deref(), Some("HTTP/1.1 200 OK"));

    // An unrelated edit leaves both open.
    proxy.reconfigure(&base.replace("tcp-1", "tcp-2"));
    assert!(!closed_within(&mut cut, std::time::Duration::from_millis(1500)).await);
    assert_eq!(exchange(&mut cut).await.as_deref(), Some("HTTP/1.1 200 OK"));

    proxy.reconfigure(&format!(
        "{}authorizationPolicies:
  - name: default/block-127-0-0-2
    action: DENY
    rules: [{{from: [{{ipBlocks: [127.0.0.2/32]}}]}}]
",
        base.replace("tcp-1", "tcp-3")
    ));
    // The file is polled every 500 ms and open connections looked at every 250 ms.
    let start = std::time::Instant::now();
    // Reset, not ended: the caller cannot take it for a complete answer.
    assert!(reset_within(&mut cut, std::time::Duration::from_secs(3)).await);
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_millis(1500), "{took:?}");
    assert_eq!(
        exchange(&mut kept).await.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "an allowed connection is untouched"
    );
    let e = proxy
        .wait_log("the revoked connection", |e| {
            e["response_flags"] == "RBAC"
                && e["downstream_remote_address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("127.0.0.2:"))
        })
        .await;
    assert!(e["bytes_received"].as_u64().unwrap_or(0) > 0, "{e}");
    // A new connection the policy denies never reaches the app.
    let mut again = open_from([127, 0, 0, 2], inb).await;
    assert!(reset_within(&mut again, std::time::Duration::from_secs(3)).await);
    proxy.stop().await;
}
