//! WebSocket through the proxy's HTTP/1.1 Upgrade path, with the `websockets` library on both
//! ends (`peers/ws_peer.py`): text and binary echo, and a close code and reason the server
//! sends that must reach the client.

use std::net::SocketAddr;
use std::time::Duration;

use halyard_tests::*;

/// How long the client peer may take in all (each of its waits is capped at 10 s).
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// Runs the websockets client peer through `proxy` with `Host: host`; returns its summary.
fn run_client(proxy: SocketAddr, host: &str) -> Value {
    run_peer(
        "ws client peer",
        peer_command("ws_peer.py").args(["client", "--proxy", &proxy.to_string(), "--host", host]),
        CLIENT_DEADLINE,
    )
}

#[test]
fn websocket_echo_and_close_through_outbound() {
    let (_server, port) = start_peer_server("ws_peer.py");
    let proxy = Proxy::start(&format!(
        "version: ws
services:
  - name: ws.default.svc.cluster.local
    hosts: [ws.local]
    ports: [{{port: 80, protocol: HTTP, targetPort: {port}}}]
    endpoints: [{{address: 127.0.0.1}}]
"
    ));

    let r = run_client(proxy.outbound, "ws.local");
    assert_eq!(r["handshake_status"], 101, "{r}");
    assert_eq!(r["text_messages"], 50, "{r}");
    assert_eq!(r["binary_bytes"], 256 * 1024, "{r}");
    assert_eq!(r["close_code"], 4001, "{r}");
    assert_eq!(r["close_reason"], "bye", "{r}");

    let e = proxy.wait_log("the upgrade of /chat", |e| e["path"] == "/chat");
    assert_eq!(e["response_code"], 101, "{e}");
    assert_eq!(e["response_flags"], "-", "{e}");
    assert_eq!(e["listener"], "outbound", "{e}");
    assert_eq!(e["method"], "GET", "{e}");
    assert_eq!(e["protocol"], "HTTP/1.1", "{e}");
    assert_eq!(e["authority"], "ws.local", "{e}");
    assert_eq!(e["upstream_cluster"], "ws.default.svc.cluster.local", "{e}");
    assert_eq!(e["upstream_host"], format!("127.0.0.1:{port}"), "{e}");
    // Logged when the tunnel closed, with what it carried (the echoed 256 KiB both ways).
    let (sent, received) = (
        e["bytes_sent"].as_u64().unwrap_or(0),
        e["bytes_received"].as_u64().unwrap_or(0),
    );
    assert!(sent >= 256 * 1024 && received >= 256 * 1024, "{e}");
}
