//! gRPC through the proxy with Python grpcio on both ends: unary with trailers, bidirectional
//! ping-pong streaming and error statuses, via the outbound and the inbound listener.

use std::process::Command;

use halyard_tests::*;

fn grpc_server() -> (Proc, u16) {
    let mut cmd = Command::new(python());
    cmd.arg(peer("grpc_peer.py")).arg("server");
    let (proc, port) = spawn_until("grpc server", cmd, "listening on ");
    (proc, port.parse().expect("port"))
}

fn run_client(target: std::net::SocketAddr) -> Value {
    let out = Command::new(python())
        .arg(peer("grpc_peer.py"))
        .args([
            "client",
            "--target",
            &target.to_string(),
            "--authority",
            "grpc.local",
        ])
        .output()
        .expect("run grpc client");
    assert!(
        out.status.success(),
        "grpc client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client JSON")
}

#[test]
fn grpc_unary_bidi_and_errors_through_outbound() {
    let (_server, port) = grpc_server();
    let proxy = Proxy::start(&format!(
        "version: grpc
services:
  - name: grpc.default.svc.cluster.local
    hosts: [grpc.local]
    ports: [{{port: 80, protocol: GRPC, targetPort: {port}}}]
    endpoints: [{{address: 127.0.0.1}}]
"
    ));
    let r = run_client(proxy.outbound);
    assert_eq!(r["unary_bytes"], 1 << 20);
    assert_eq!(r["trailer"], "done");
    assert_eq!(r["bidi_rounds"], 20);
    assert_eq!(r["fail_status"], "NOT_FOUND");
    let e = proxy.wait_log("unary", |e| e["path"] == "/halyard.test.Echo/Unary");
    assert_eq!(e["response_code"], 200);
    assert_eq!(e["protocol"], "HTTP/2");
    assert_eq!(e["upstream_cluster"], "grpc.default.svc.cluster.local");
    proxy.wait_log("bidi", |e| e["path"] == "/halyard.test.Echo/Bidi");
}

#[test]
fn grpc_through_inbound() {
    let (_server, port) = grpc_server();
    let proxy = Proxy::start(&format!(
        "version: grpc-in
workload:
  name: grpc-app
  ports: [{{port: 8080, protocol: GRPC, appAddress: '127.0.0.1:{port}'}}]
"
    ));
    let r = run_client(proxy.inbound);
    assert_eq!(r["bidi_rounds"], 20);
    let e = proxy.wait_log("inbound unary", |e| e["path"] == "/halyard.test.Echo/Unary");
    assert_eq!(e["listener"], "inbound");
}
