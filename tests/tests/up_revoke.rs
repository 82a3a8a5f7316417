//! A tightened policy cuts what it now denies, through `halyard-control up` with real sockets:
//! a TCP service and a WebSocket service behind STRICT sidecars, callers `client` and `other`.
//! Once `client` is denied, its open CONNECT tunnel and WebSocket close within a second while
//! `other`'s go on, and a new tunnel of `client` gets 403 from its own sidecar. Before that,
//! 10,000 idle tunnels survive an unrelated policy edit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use halyard_tests::*;

const TCP_HOST: &str = "tcpsvc.shop.svc.cluster.local:9000";
const WS_HOST: &str = "wssvc.shop.svc.cluster.local:8080";
/// The TCP service's app (the echo peer) listens here: its workload's own loopback address.
const TCP_APP: &str = "127.0.21.3:9000";
const IDLE_TUNNELS: usize = 10_000;

fn workload(name: &str, address: &str, ports: &str, demo: bool) -> String {
    let labels = if demo {
        "\n  labels: {halyard.dev/demo-app: echo}"
    } else {
        ""
    };
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  \
         namespace: shop{labels}\nspec:\n  address: {address}\n  serviceAccount: {name}{ports}\n  \
         labels: {{app: {name}}}\n"
    )
}

fn service(name: &str, port: u16, protocol: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, \
         namespace: shop}}\nspec:\n  hosts: [{name}.shop.svc.cluster.local]\n  location: \
         MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: {port}, name: p, protocol: \
         {protocol}}}]\n  workloadSelector: {{labels: {{app: {name}}}}}\n"
    )
}

fn policy(name: &str, action: &str, principal: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, \
         namespace: shop}}\nspec:\n  action: {action}\n  rules:\n  - from: [{{source: \
         {{principals: [{principal}]}}}}]\n"
    )
}

/// Two callers (demo echo apps), the TCP service, the WebSocket service on `ws_port`; STRICT
/// mTLS; callers `client` and `other` allowed.
fn mesh(ws_port: u16) -> String {
    let mut y = String::from(
        "apiVersion: halyard.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: \
         istio-system}\nspec: {trustDomain: cluster.local, outboundTrafficPolicy: {mode: \
         REGISTRY_ONLY}}\n",
    );
    y += &workload("client", "127.0.21.1", "", true);
    y += &workload("other", "127.0.21.2", "", true);
    y += &workload("tcpsvc", "127.0.21.3", "", false);
    y += &workload(
        "wssvc",
        "127.0.0.1",
        &format!("\n  ports: {{p: {ws_port}}}"),
        false,
    );
    y += &service("client", 8080, "HTTP");
    y += &service("other", 8080, "HTTP");
    y += &service("tcpsvc", 9000, "TCP");
    y += &service("wssvc", 8080, "HTTP");
    y += "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: \
          default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n---\n";
    y += &policy(
        "callers",
        "ALLOW",
        "cluster.local/ns/shop/sa/client, cluster.local/ns/shop/sa/other",
    );
    y
}

/// `CONNECT host:port` through a sidecar's outbound listener: the open tunnel, or the status
/// line it was refused with.
fn tunnel(outbound: SocketAddr, target: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(outbound).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(DEADLINE))
        .map_err(|e| e.to_string())?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&head))),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.lines().next().unwrap_or_default().to_string();
    if status.split(' ').nth(1) == Some("200") {
        Ok(s)
    } else {
        Err(status)
    }
}

/// Sends `msg` and reads its echo back.
fn echoes(s: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    s.write_all(msg).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    (back == msg)
        .then_some(())
        .ok_or_else(|| "wrong echo".into())
}

/// How long until the peer closes `s` (EOF or reset), at most `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).ok()?;
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Some(start.elapsed()),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(start.elapsed()),
        Err(_) => None,
    }
}

/// The policy names a sidecar has applied.
fn applied_policies(admin: SocketAddr) -> Vec<String> {
    let dump = http(admin, "GET", "/config_dump", &[], b"")
        .map(|r| r.json())
        .unwrap_or_default();
    dump["config"]["authorizationPolicies"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every sidecar in `admins` applied policy `name`; returns when the last did.
fn wait_applied(admins: &[SocketAddr], name: &str) -> Instant {
    for a in admins {
        wait_for(&format!("{name} applied at {a}"), || {
            applied_policies(*a).iter().any(|p| p == name).then_some(())
        });
    }
    Instant::now()
}

fn metric(admin: SocketAddr, prefix: &str) -> f64 {
    let text = http(admin, "GET", "/stats/prometheus", &[], b"")
        .map(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Room for the idle tunnels: this process holds one socket per tunnel, and so do the sidecars
/// and the echo peer, which inherit the limit.
fn raise_open_files(needed: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        hard >= needed,
        "this test needs {needed} open files per process; the hard limit is {hard}"
    );
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).expect("setrlimit");
    }
}

#[test]
fn a_tightened_policy_closes_tunnels_and_websockets_it_now_denies_through_up() {
    raise_open_files(IDLE_TUNNELS as u64 + 2000);
    let tmp = TempDir::new("up-revoke");
    let mut echo_cmd = peer_command("tcp_echo.py");
    echo_cmd.args(["server", "--listen", TCP_APP]);
    let (_tcp_app, _) = spawn_until("tcp echo", echo_cmd, "listening on ");
    let (_ws_app, ws_port) = start_peer_server("ws_peer.py");
    let dir = write_mesh(&tmp, &mesh(ws_port));
    let up = Up::start(&tmp, &dir);
    let (client, other) = (up.addr("client", "outbound"), up.addr("other", "outbound"));
    let services = [up.addr("tcpsvc", "admin"), up.addr("wssvc", "admin")];

    // Open tunnels and WebSockets of both callers.
    let mut tunnels = Vec::new();
    for (name, outbound) in [("client", client), ("other", other)] {
        let mut t = tunnel(outbound, TCP_HOST).unwrap_or_else(|e| panic!("{name}: {e}"));
        echoes(&mut t, format!("hello from {name}\n").as_bytes()).expect("echo");
        tunnels.push(t);
    }
    let ws = |outbound: SocketAddr| {
        let mut cmd = peer_command("ws_peer.py");
        cmd.args(["hold", "--proxy", &outbound.to_string(), "--host", WS_HOST]);
        let events = Events::start("ws hold", cmd);
        events.next("open");
        events
    };
    let (client_ws, other_ws) = (ws(client), ws(other));

    // 10,000 idle tunnels of `other` survive an unrelated policy edit.
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE_TUNNELS)
        .map(|i| tunnel(other, TCP_HOST).unwrap_or_else(|e| panic!("idle tunnel {i}: {e}")))
        .collect();
    eprintln!(
        "opened {IDLE_TUNNELS} idle tunnels in {:?}",
        started.elapsed()
    );
    std::fs::write(
        dir.join("unrelated.yaml"),
        policy("nobody", "DENY", "cluster.local/ns/shop/sa/nobody"),
    )
    .expect("write");
    wait_applied(&services, "shop/nobody");
    // Two re-check periods later every idle tunnel still echoes.
    std::thread::sleep(Duration::from_millis(600));
    let took = metric(services[0], "halyard_open_connections_recheck_seconds");
    eprintln!(
        "tcpsvc's sidecar decided its open tunnels again in {:.1} ms",
        took * 1e3
    );
    assert!(took > 0.0 && took < 0.5, "{took} s");
    for (i, t) in idle.iter_mut().enumerate() {
        echoes(t, b"!").unwrap_or_else(|e| panic!("idle tunnel {i} after the edit: {e}"));
    }
    assert_eq!(
        metric(services[0], "halyard_connections_revoked_total"),
        0.0
    );
    drop(idle);

    // Deny `client`.
    std::fs::write(
        dir.join("deny.yaml"),
        policy("deny-client", "DENY", "cluster.local/ns/shop/sa/client"),
    )
    .expect("write");
    let applied = wait_applied(&services, "shop/deny-client");
    let mut client_tunnel = tunnels.remove(0);
    closed_within(&mut client_tunnel, Duration::from_secs(2)).expect("client's tunnel closed");
    let since = applied.elapsed();
    eprintln!("client's tunnel closed {since:?} after the policy was applied");
    assert!(since < Duration::from_secs(1), "{since:?}");
    let (at, e) = client_ws.until("closed");
    let ws_since = at.saturating_duration_since(applied);
    eprintln!("client's WebSocket closed {ws_since:?} after the policy was applied: {e}");
    assert!(ws_since < Duration::from_secs(1), "{ws_since:?}");

    // `other`'s tunnel and WebSocket go on; `client`'s new tunnel is refused with 403.
    echoes(&mut tunnels[0], b"still here\n").expect("other's tunnel");
    other_ws.ready();
    std::thread::sleep(Duration::from_millis(500));
    let echoed: Vec<_> = other_ws.ready();
    assert!(
        echoed.len() >= 3 && echoed.iter().all(|(_, e)| e["event"] == "echo"),
        "other's WebSocket after the edit: {echoed:?}"
    );
    let refused = tunnel(client, TCP_HOST).expect_err("client's new tunnel");
    assert!(refused.contains(" 403 "), "{refused}");

    // Counted and logged where the policy is enforced.
    for admin in services {
        assert_eq!(
            metric(
                admin,
                "halyard_connections_revoked_total{reason=\"policy\"}"
            ),
            1.0,
            "{admin}"
        );
    }
    let log = up.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("tcpsvc") && l.contains("CONNECT") && l.contains("RBAC")),
        "no revoked CONNECT in the access log"
    );
    up.stop();
}
