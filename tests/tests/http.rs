//! HTTP/1.1 and HTTP/2 through the outbound and inbound listeners, driven by curl. Cases that
//! need no outside client (header handling, failures and their flags, balancing, inbound
//! forwarding) run in-process in `cargo test -p halyard-proxy` (`proxy/src/listeners/tests.rs`).

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
