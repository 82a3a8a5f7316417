//! HTTP/1.1 and HTTP/2 through the outbound and inbound listeners, driven by curl.

use halyard_tests::*;

fn host(h: &str) -> String {
    format!("Host: {h}")
}

#[test]
fn http1_through_outbound_adds_mesh_headers_and_logs() {
    let echo = Echo::start("echo-a");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    let out = curl(&[
        "-H",
        &host("echo.local"),
        "-H",
        "X-Forwarded-For: 10.1.2.3",
        &url(proxy.outbound, "/hello?x=1"),
    ]);
    assert_eq!(out.status, 200, "{out:?}");
    let doc = out.json();
    assert_eq!(doc["workload"], "echo-a");
    assert_eq!(doc["path"], "/hello?x=1");
    assert_eq!(doc["protocol"], "HTTP/1.1");
    let h = &doc["headers"];
    assert_eq!(h["host"], "echo.local");
    assert!(
        h["x-request-id"].as_str().is_some_and(|v| v.len() >= 16),
        "{h}"
    );
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");

    // A request id from the client is kept.
    let out = curl(&[
        "-H",
        &host("echo.local"),
        "-H",
        "X-Request-Id: my-id-1",
        &url(proxy.outbound, "/"),
    ]);
    assert_eq!(out.json()["headers"]["x-request-id"], "my-id-1");

    let e = proxy.wait_log("GET /hello", |e| e["path"] == "/hello?x=1");
    assert_eq!(e["response_code"], 200);
    assert_eq!(e["response_flags"], "-");
    assert_eq!(e["method"], "GET");
    assert_eq!(e["listener"], "outbound");
    assert_eq!(e["authority"], "echo.local");
    assert_eq!(e["upstream_cluster"], "echo.default.svc.cluster.local");
    assert_eq!(e["upstream_host"], format!("127.0.0.1:{}", echo.port()));
    assert!(e["bytes_sent"].as_u64().unwrap_or(0) > 0, "{e}");
    let id = e["request_id"].as_str().unwrap_or_default();
    assert_eq!(doc["headers"]["x-request-id"].as_str(), Some(id));
}

#[test]
fn http2_prior_knowledge_keeps_protocol_for_auto_services() {
    let echo = Echo::start("echo-h2");
    let cfg = echo_config(echo.port(), "").replace("protocol: HTTP\n", "protocol: AUTO\n");
    let proxy = Proxy::start(&cfg);
    let out = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &host("echo.local"),
        &url(proxy.outbound, "/h2"),
    ]);
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.json()["protocol"], "HTTP/2.0");
    let e = proxy.wait_log("h2 request", |e| e["path"] == "/h2");
    assert_eq!(e["protocol"], "HTTP/2");
    assert_eq!(e["response_code"], 200);

    // An HTTP service gets HTTP/1.1 upstream even from an h2 client.
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    let out = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &host("echo.local"),
        &url(proxy.outbound, "/down"),
    ]);
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.json()["protocol"], "HTTP/1.1");
}

#[test]
fn keep_alive_chunked_and_expect_continue() {
    let echo = Echo::start("echo-ka");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    // Two requests on one curl: the second reuses the downstream connection.
    let out = curl(&[
        "-v",
        "-H",
        &host("echo.local"),
        &url(proxy.outbound, "/one"),
        &url(proxy.outbound, "/two"),
    ]);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stderr.contains("Re-using existing connection")
            || out.stderr.contains("Reusing existing"),
        "second request did not reuse the connection:\n{}",
        out.stderr
    );

    // Chunked upload of 3 MB with Expect: 100-continue.
    let dir = TempDir::new("upload");
    let file = dir.path().join("body.bin");
    std::fs::write(&file, vec![b'z'; 3_000_000]).unwrap();
    let out = curl(&[
        "-v",
        "-H",
        &host("echo.local"),
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", file.display()),
        &url(proxy.outbound, "/upload"),
    ]);
    assert_eq!(out.status, 200, "{out:?}");
    assert!(
        out.stderr.contains("HTTP/1.1 100 Continue"),
        "{}",
        out.stderr
    );
    assert_eq!(out.json()["body_bytes"], 3_000_000);
    assert_eq!(out.json()["method"], "POST");
}

#[test]
fn a_malformed_chunked_body_is_the_clients_error() {
    use std::io::{Read, Write};
    let echo = Echo::start("echo-dpe");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    let mut s = std::net::TcpStream::connect(proxy.outbound).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(
        b"POST /bad-chunk HTTP/1.1\r\nHost: echo.local\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\n\r\n",
    )
    .expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("a response");
    assert_eq!(&head, b"HTTP/1.1 400", "{}", String::from_utf8_lossy(&head));
    let e = proxy.wait_log("/bad-chunk", |e| e["path"] == "/bad-chunk");
    assert_eq!(e["response_code"], 400, "{e}");
    assert_eq!(e["response_flags"], "DPE", "{e}");
    // Not the upstream's fault: the next request goes through.
    let out = curl(&["-H", &host("echo.local"), &url(proxy.outbound, "/after")]);
    assert_eq!(out.status, 200, "{out:?}");
}

#[test]
fn hop_by_hop_headers_are_removed() {
    let echo = Echo::start("echo-hop");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    let r = http(
        proxy.outbound,
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
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    for gone in ["x-secret-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(h["x-kept"], "yes");
}

#[test]
fn oversized_headers_get_431_and_the_proxy_lives_on() {
    let echo = Echo::start("echo-big");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    let big = "a".repeat(200 * 1024);
    let r = http(
        proxy.outbound,
        "GET",
        "/",
        &[("host", "echo.local"), ("x-big", &big)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 431);
    let out = curl(&["-H", &host("echo.local"), &url(proxy.outbound, "/after")]);
    assert_eq!(out.status, 200);
}

#[test]
fn failures_map_to_status_and_flags() {
    let echo = Echo::start("echo-slow");
    // A port nothing listens on: bind, note, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let extra = format!(
        "  - name: down.default.svc.cluster.local
    hosts: [down.local]
    ports: [{{port: 80, protocol: HTTP, targetPort: {dead_port}}}]
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
"
    );
    let proxy = Proxy::start(&echo_config(echo.port(), &extra));

    let out = curl(&["-H", &host("down.local"), &url(proxy.outbound, "/d")]);
    assert_eq!(out.status, 503, "{out:?}");
    assert!(out.body.contains("UF"), "{}", out.body);
    let e = proxy.wait_log("UF", |e| e["path"] == "/d");
    let flags = e["response_flags"].as_str().unwrap_or_default();
    assert!(flags.contains("UF") && flags.contains("URX"), "{e}");

    let start = std::time::Instant::now();
    let out = curl(&[
        "-H",
        &host("echo.local"),
        &url(proxy.outbound, "/slow?delay_ms=3000"),
    ]);
    let took = start.elapsed();
    assert_eq!(out.status, 504, "{out:?}");
    assert!(
        took >= std::time::Duration::from_millis(250) && took < std::time::Duration::from_secs(2),
        "timeout took {took:?}"
    );
    let e = proxy.wait_log("UT", |e| e["path"] == "/slow?delay_ms=3000");
    assert_eq!(e["response_flags"], "UT");
    assert_eq!(e["route_name"], "slow-route");

    // The same delay on the default route (no timeout set there) succeeds.
    let out = curl(&[
        "-H",
        &host("echo.local"),
        &url(proxy.outbound, "/fast?delay_ms=500"),
    ]);
    assert_eq!(out.status, 200, "{out:?}");

    let out = curl(&["-H", &host("nowhere.local"), &url(proxy.outbound, "/n")]);
    assert_eq!(out.status, 502, "{out:?}");
    assert_eq!(
        proxy.wait_log("NR", |e| e["path"] == "/n")["response_flags"],
        "NR"
    );

    let out = curl(&["-H", &host("empty.local"), &url(proxy.outbound, "/e")]);
    assert_eq!(out.status, 503, "{out:?}");
    assert_eq!(
        proxy.wait_log("UH", |e| e["path"] == "/e")["response_flags"],
        "UH"
    );

    // Upstream statuses pass through untouched.
    let out = curl(&[
        "-H",
        &host("echo.local"),
        &url(proxy.outbound, "/x?status=418"),
    ]);
    assert_eq!(out.status, 418);
}

#[test]
fn balancing_spreads_over_endpoints_and_skips_dead_ones() {
    let a = Echo::start("lb-a");
    let b = Echo::start("lb-b");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
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
      - {{address: 127.0.0.1, port: {dead_port}}}
",
            a.port(),
            b.port()
        );
        let proxy = Proxy::start(&cfg);
        let mut seen = std::collections::HashMap::new();
        for i in 0..30 {
            let out = curl(&["-H", &host("lb.local"), &url(proxy.outbound, "/")]);
            assert_eq!(out.status, 200, "{lb} request {i}: {out:?}");
            *seen
                .entry(out.json()["workload"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 2, "{lb}: {seen:?}");
        if lb == "ROUND_ROBIN" {
            // The dead endpoint's turns go to the next live one, so neither side starves.
            assert!(seen.values().all(|&n| n >= 8), "{lb}: {seen:?}");
        }
    }
}

#[test]
fn inbound_forwards_to_the_workload_port() {
    let echo = Echo::start("app");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    let out = curl(&["-H", "Host: app.example", &url(proxy.inbound, "/in")]);
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.json()["workload"], "app");
    let e = proxy.wait_log("inbound", |e| e["path"] == "/in");
    assert_eq!(e["listener"], "inbound");
}

#[test]
fn connect_tunnels_to_a_service() {
    let echo = Echo::start("tunnel");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    // curl -p: CONNECT echo.local:80 through the proxy, then plain HTTP inside the tunnel.
    let out = curl(&[
        "-v",
        "-p",
        "-x",
        &url(proxy.outbound, ""),
        "http://echo.local:80/inside",
    ]);
    assert_eq!(out.status, 200, "{out:?}");
    assert!(
        out.stderr.contains("CONNECT echo.local:80"),
        "{}",
        out.stderr
    );
    assert_eq!(out.json()["path"], "/inside");
}
