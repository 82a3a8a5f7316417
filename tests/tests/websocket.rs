//! WebSocket through the proxy's HTTP/1.1 Upgrade path, with the `websockets` library on both
//! ends (`peers/ws_peer.py`): text and binary echo, and a close code and reason the server
//! sends that must reach the client.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use halyard_tests::*;

/// How long the client peer may take in all (each of its waits is capped at 10 s).
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// Starts the websockets server peer; returns it and its port.
fn ws_server() -> (Proc, u16) {
    let mut cmd = Command::new(python());
    cmd.arg(peer("ws_peer.py")).arg("server");
    let (proc, port) = spawn_until("ws server peer", cmd, "listening on ");
    (proc, port.parse().expect("ws server port"))
}

/// Runs the websockets client peer through `proxy` with `Host: host` and returns its JSON
/// summary; fails the test with the peer's output when it exits non-zero or does not finish
/// in time.
fn run_client(proxy: SocketAddr, host: &str) -> Value {
    let dir = TempDir::new("ws-client");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut client = Proc::spawn(
        "ws client peer",
        Command::new(python())
            .arg(peer("ws_peer.py"))
            .args(["client", "--proxy", &proxy.to_string(), "--host", host])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file")),
    );
    let status = client.wait_exit(CLIENT_DEADLINE);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("ws client peer exited with {s}:\n{stdout}\n{stderr}"),
        None => panic!("ws client peer still running after {CLIENT_DEADLINE:?}:\n{stderr}"),
    }
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ws client summary not JSON ({e}): {stdout}"))
}

#[test]
fn websocket_echo_and_close_through_outbound() {
    let (_server, port) = ws_server();
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
}
