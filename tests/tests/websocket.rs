//! WebSocket through the proxy's HTTP/1.1 Upgrade path, with the `websockets` library on
//! both ends: text, binary, and a close code that must reach the client.

use std::process::Command;

use halyard_tests::*;

#[test]
fn websocket_echo_and_close_through_outbound() {
    let mut cmd = Command::new(python());
    cmd.arg(peer("ws_peer.py")).arg("server");
    let (_server, port) = spawn_until("ws server", cmd, "listening on ");
    let proxy = Proxy::start(&format!(
        "version: ws
services:
  - name: ws.default.svc.cluster.local
    hosts: [ws.local]
    ports: [{{port: 80, protocol: HTTP, targetPort: {port}}}]
    endpoints: [{{address: 127.0.0.1}}]
"
    ));
    let out = Command::new(python())
        .arg(peer("ws_peer.py"))
        .args([
            "client",
            "--proxy",
            &proxy.outbound.to_string(),
            "--host",
            "ws.local",
        ])
        .output()
        .expect("run ws client");
    assert!(
        out.status.success(),
        "ws client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["close_code"], 4001);
    assert_eq!(r["binary_bytes"], 256 * 1024);
    let e = proxy.wait_log("upgrade", |e| e["path"] == "/chat");
    assert_eq!(e["response_code"], 101);
}
