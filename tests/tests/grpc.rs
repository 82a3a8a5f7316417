//! gRPC through the proxy with Python grpcio on both ends (`peers/grpc_peer.py`): unary with
//! a 1 MiB message and trailing metadata, bidirectional ping-pong streaming (each message is
//! sent only after the previous echo came back, so buffering in either direction stalls it)
//! and an error status, via the outbound and the inbound listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use halyard_tests::*;

const UNARY: &str = "/halyard.test.Echo/Unary";
const BIDI: &str = "/halyard.test.Echo/Bidi";
const FAIL: &str = "/halyard.test.Echo/Fail";
/// A 1 MiB message plus its 5-byte gRPC length prefix.
const UNARY_BODY: u64 = (1 << 20) + 5;
/// 20 pings of 6 or 7 bytes, each with its 5-byte prefix.
const BIDI_BODY: u64 = 20 * 11;
/// How long the client peer may take in all (each of its waits is capped at 10 s).
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// Runs the grpcio client peer against `target` and returns its JSON summary.
fn run_client(target: SocketAddr) -> Value {
    run_peer(
        "grpc client peer",
        peer_command("grpc_peer.py")
            .args(["client", "--target", &target.to_string()])
            .args(["--authority", "grpc.local"]),
        CLIENT_DEADLINE,
    )
}

/// The client peer did every call and saw what the server sent.
fn assert_summary(r: &Value) {
    assert_eq!(r["unary_bytes"], 1 << 20, "{r}");
    assert_eq!(r["trailer"], "done", "{r}");
    assert_eq!(r["bidi_rounds"], 20, "{r}");
    assert_eq!(r["fail_status"], "NOT_FOUND", "{r}");
    assert_eq!(r["fail_details"], "no such thing: halyard.test/42", "{r}");
}

/// The access log entry of `path`, checked for what every call of the peer shares: HTTP/2
/// (gRPC status travels in trailers, so the HTTP status is 200 even for `Fail`), no flags,
/// the server peer as upstream, the client's authority.
fn logged_call(proxy: &Proxy, listener: &str, path: &str, server_port: u16) -> Value {
    let e = proxy.wait_log(path, |e| e["path"] == path);
    assert_eq!(e["listener"], listener, "{e}");
    assert_eq!(e["method"], "POST", "{e}");
    assert_eq!(e["protocol"], "HTTP/2", "{e}");
    assert_eq!(e["response_code"], 200, "{e}");
    assert_eq!(e["response_flags"], "-", "{e}");
    assert_eq!(e["authority"], "grpc.local", "{e}");
    assert_eq!(
        e["upstream_host"],
        format!("127.0.0.1:{server_port}"),
        "{e}"
    );
    e
}

/// The echo calls moved the same bytes both ways, all of them through the proxy.
fn assert_echoed(e: &Value, at_least: u64) {
    let received = e["bytes_received"].as_u64().expect("bytes_received");
    assert!(received >= at_least, "{e}");
    assert_eq!(e["bytes_sent"], received, "{e}");
}

#[test]
fn grpc_unary_bidi_and_errors_through_outbound() {
    let (_server, port) = start_peer_server("grpc_peer.py");
    let proxy = Proxy::start(&format!(
        "version: grpc-out
services:
  - name: grpc.default.svc.cluster.local
    hosts: [grpc.local]
    ports: [{{port: 80, protocol: GRPC, targetPort: {port}}}]
    endpoints: [{{address: 127.0.0.1}}]
"
    ));

    assert_summary(&run_client(proxy.outbound));

    let unary = logged_call(&proxy, "outbound", UNARY, port);
    let bidi = logged_call(&proxy, "outbound", BIDI, port);
    let fail = logged_call(&proxy, "outbound", FAIL, port);
    for e in [&unary, &bidi, &fail] {
        assert_eq!(
            e["upstream_cluster"], "grpc.default.svc.cluster.local",
            "{e}"
        );
    }
    assert_echoed(&unary, UNARY_BODY);
    assert_echoed(&bidi, BIDI_BODY);
    wait_for("3 outbound requests counted with code 200", || {
        let n = proxy.metric("halyard_requests_total{code=\"200\",listener=\"outbound\"}")?;
        (n >= 3.0).then_some(())
    });
    // Istio's metrics carry the gRPC status from the trailers: two OK calls, one NOT_FOUND (5).
    let text = proxy.admin("GET", "/stats/prometheus").text();
    let count = |status: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| l.contains("request_protocol=\"grpc\""))
            .filter(|l| l.contains(&format!("grpc_response_status=\"{status}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!((count("0"), count("5")), (2.0, 1.0), "{text}");
}

#[test]
fn grpc_unary_bidi_and_errors_through_inbound() {
    let (_server, port) = start_peer_server("grpc_peer.py");
    let proxy = Proxy::start(&format!(
        "version: grpc-in
workload:
  name: grpc-app
  namespace: default
  ports: [{{port: 8080, protocol: GRPC, appAddress: '127.0.0.1:{port}'}}]
"
    ));

    assert_summary(&run_client(proxy.inbound));

    assert_echoed(&logged_call(&proxy, "inbound", UNARY, port), UNARY_BODY);
    assert_echoed(&logged_call(&proxy, "inbound", BIDI, port), BIDI_BODY);
    logged_call(&proxy, "inbound", FAIL, port);
}

/// One unary call through `target` as `authority`: grpcio's code and details.
fn one_call(target: SocketAddr, authority: &str) -> Value {
    run_peer(
        "grpc call",
        peer_command("grpc_peer.py")
            .args(["call", "--target", &target.to_string()])
            .args(["--authority", authority]),
        CLIENT_DEADLINE,
    )
}

#[test]
fn proxy_errors_reach_grpc_clients_as_grpc_statuses() {
    let (_server, port) = start_peer_server("grpc_peer.py");
    let closed = free_port();
    let proxy = Proxy::start(&format!(
        "version: grpc-errors
outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
services:
  - name: grpc.default.svc.cluster.local
    hosts: [grpc.local]
    ports: [{{port: 80, protocol: GRPC, targetPort: {port}}}]
    endpoints: [{{address: 127.0.0.1}}]
  - name: none.default.svc.cluster.local
    hosts: [none.local]
    ports: [{{port: 80, protocol: GRPC}}]
  - name: closed.default.svc.cluster.local
    hosts: [closed.local]
    ports: [{{port: 80, protocol: GRPC, targetPort: {closed}}}]
    endpoints: [{{address: 127.0.0.1}}]
    connectTimeout: 1s
"
    ));
    let ok = one_call(proxy.outbound, "grpc.local");
    assert_eq!(ok["code"], "OK", "{ok}");
    // Envoy's form: HTTP 200, trailers-only, grpc-status from the HTTP status.
    for (authority, details, flags) in [
        ("unknown.local", "no route to destination (NR)", "NR"),
        ("none.local", "no healthy upstream (UH)", "UH"),
        ("closed.local", "upstream connect error (UF)", "UF,URX"),
    ] {
        let r = one_call(proxy.outbound, authority);
        assert_eq!(r["code"], "UNAVAILABLE", "{authority}: {r}");
        assert_eq!(r["details"], details, "{authority}: {r}");
        let e = proxy.wait_log(authority, |e| e["authority"] == authority);
        assert_eq!(e["response_code"], 200, "{e}");
        assert_eq!(e["response_flags"], flags, "{e}");
    }
}

/// Starts the `watch` peer with `calls` against `target` (the server itself at `direct`).
fn watch(target: SocketAddr, direct: u16, calls: &[&str]) -> Events {
    let mut cmd = peer_command("grpc_peer.py");
    cmd.args(["watch", "--target", &target.to_string()])
        .args(["--authority", "grpc.local"])
        .args(["--direct", &format!("127.0.0.1:{direct}")]);
    for c in calls {
        cmd.args(["--call", c]);
    }
    Events::start("grpc watch peer", cmd)
}

/// The next `n` events of kind `event`, by call name, with when each arrived.
fn next_calls(w: &Events, event: &str, n: usize) -> HashMap<String, (Instant, Value)> {
    (0..n)
        .map(|_| {
            let (at, v) = w.next(event);
            (v["call"].as_str().unwrap_or_default().to_string(), (at, v))
        })
        .collect()
}

/// What the inbound proxy serves: the gRPC peer on a GRPC port, with `policies`.
fn grpc_workload(version: &str, app_port: u16, policies: &str) -> String {
    format!(
        "version: {version}
workload:
  name: grpc-app
  namespace: default
  ports: [{{port: 8080, protocol: GRPC, appAddress: '127.0.0.1:{app_port}'}}]
{policies}"
    )
}

const DENY_MALLORY: &str = "authorizationPolicies:
  - name: default/deny-mallory
    action: DENY
    rules:
      - when: [{key: 'request.headers[x-user]', values: [mallory]}]
";

#[test]
fn a_tightened_policy_ends_grpc_calls_in_flight_with_permission_denied() {
    let (_server, port) = start_peer_server("grpc_peer.py");
    let proxy = Proxy::start(&grpc_workload("open", port, ""));
    // Mallory's stream and held call are denied by the new policy; Alice's stream of 40
    // ticks (4 s) outlives the change untouched.
    let watch = watch(
        proxy.inbound,
        port,
        &[
            "mallory-ticks:Ticks:mallory",
            "mallory-hold:Hold:mallory",
            "alice-ticks:Ticks:alice:40",
        ],
    );
    next_calls(&watch, "open", 3);

    std::fs::write(
        proxy.config_path(),
        grpc_workload("tight", port, DENY_MALLORY),
    )
    .expect("write config");
    proxy.proc.signal("HUP");
    wait_for("version tight", || {
        (proxy.admin("GET", "/config_dump").json()["version"] == "tight").then_some(())
    });
    let applied = Instant::now();
    let ended = next_calls(&watch, "end", 2);
    for name in ["mallory-ticks", "mallory-hold"] {
        let (at, e) = &ended[name];
        assert_eq!(e["code"], "PERMISSION_DENIED", "{name}: {e}");
        assert_eq!(e["details"], "RBAC: access denied", "{name}: {e}");
        let took = at.saturating_duration_since(applied);
        eprintln!("{name} ended {took:?} after the policy was applied");
        assert!(took < Duration::from_secs(1), "{name}: {took:?}");
    }
    assert!(ended["mallory-ticks"].1["messages"].as_u64() > Some(0));
    let alice = &next_calls(&watch, "end", 1)["alice-ticks"].1;
    assert_eq!(alice["code"], "OK", "{alice}");
    assert_eq!(alice["messages"], 40, "{alice}");

    // The ended calls are logged with the flag, and counted.
    for path in ["/halyard.test.Echo/Ticks", "/halyard.test.Echo/Hold"] {
        let e = proxy.wait_log(path, |e| e["path"] == path && e["response_flags"] == "RBAC");
        assert_eq!(e["response_code"], 200, "{e}");
    }
    assert_eq!(
        proxy.metric("halyard_streams_revoked_total{reason=\"policy\"}"),
        Some(2.0)
    );
    let denied = proxy
        .admin("GET", "/stats/prometheus")
        .text()
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains("grpc_response_status=\"7\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(denied, 2.0);
}

/// One unary call to the inbound listener as `user` (metadata `x-user`).
fn one_call_as(target: SocketAddr, user: &str) -> Value {
    run_peer(
        "grpc call",
        peer_command("grpc_peer.py")
            .args(["call", "--target", &target.to_string()])
            .args(["--authority", "grpc.local", "--user", user]),
        CLIENT_DEADLINE,
    )
}

#[test]
fn calls_in_flight_are_left_alone_when_resetting_is_off() {
    let (_server, port) = start_peer_server("grpc_peer.py");
    let off = "settings: {resetDeniedStreams: false}\n";
    let proxy = Proxy::start(&grpc_workload("open", port, off));
    let watch = watch(proxy.inbound, port, &["mallory-ticks:Ticks:mallory:30"]);
    next_calls(&watch, "open", 1);
    let tight = format!("{off}{DENY_MALLORY}");
    std::fs::write(proxy.config_path(), grpc_workload("tight", port, &tight))
        .expect("write config");
    proxy.proc.signal("HUP");
    wait_for("version tight", || {
        (proxy.admin("GET", "/config_dump").json()["version"] == "tight").then_some(())
    });
    let e = &next_calls(&watch, "end", 1)["mallory-ticks"].1;
    assert_eq!(e["code"], "OK", "{e}");
    assert_eq!(e["messages"], 30, "{e}");
    // A new call is decided under the new policy all the same.
    let r = one_call_as(proxy.inbound, "mallory");
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
}
