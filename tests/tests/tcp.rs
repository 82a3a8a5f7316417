//! Opaque TCP: half-close, server-speaks-first protocols, and iptables-redirected outbound
//! traffic found through `SO_ORIGINAL_DST` in a network namespace of the test's own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use halyard_tests::*;

/// A TCP server on a thread that reads until the client's FIN, then answers `echo:` + data.
fn echo_after_eof_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut data = Vec::new();
                if s.read_to_end(&mut data).is_ok() {
                    let _ = s.write_all(b"echo:");
                    let _ = s.write_all(&data);
                }
            });
        }
    });
    port
}

fn inbound_config(app_port: u16, protocol: &str) -> String {
    format!(
        "version: tcp
workload:
  name: app
  ports:
    - {{port: 9000, protocol: {protocol}, appAddress: '127.0.0.1:{app_port}'}}
settings:
  protocolDetectionTimeout: 150ms
"
    )
}

#[test]
fn half_close_passes_both_ways() {
    let app = echo_after_eof_server();
    let proxy = Proxy::start(&inbound_config(app, "TCP"));
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut s = TcpStream::connect(proxy.inbound).unwrap();
    s.write_all(&payload).unwrap();
    // The app answers only after it sees our FIN, so this proves the FIN was relayed and
    // that the other direction stays open after it.
    s.shutdown(Shutdown::Write).unwrap();
    let got = read_all(&mut s).unwrap();
    assert_eq!(&got[..5], b"echo:");
    assert!(
        got[5..] == payload[..],
        "payload mismatch ({} bytes)",
        got.len()
    );
    let e = proxy.wait_log("TCP entry", |e| e["protocol"] == "TCP");
    assert_eq!(e["bytes_received"], 1_000_000);
    assert_eq!(e["bytes_sent"], 1_000_005);
    assert_eq!(e["listener"], "inbound");
}

#[test]
fn server_speaks_first_through_detection() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let _ = s.write_all(b"220 halyard-test ESMTP\r\n");
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_ok() {
                let _ = s.write_all(format!("250 hello {}", line).as_bytes());
            }
        }
    });
    // AUTO: the proxy waits for client bytes; none come, so after the detection timeout it
    // treats the connection as TCP and the banner flows.
    let proxy = Proxy::start(&inbound_config(port, "AUTO"));
    let s = TcpStream::connect(proxy.inbound).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut banner = String::new();
    r.read_line(&mut banner).unwrap();
    assert_eq!(banner, "220 halyard-test ESMTP\r\n");
    (&s).write_all(b"EHLO client\r\n").unwrap();
    let mut reply = String::new();
    r.read_line(&mut reply).unwrap();
    assert_eq!(reply, "250 hello EHLO client\r\n");
}

const TCP_ECHO_PY: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("listening on", sys.argv[1], file=sys.stderr, flush=True)
def serve(c):
    data = b""
    while True:
        b = c.recv(65536)
        if not b:
            break
        data += b
    c.sendall(b"echo:" + data)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

const TCP_CLIENT_PY: &str = r#"
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
if len(sys.argv) > 3:  # idle: say nothing, report when the proxy closes
    t = time.monotonic()
    c.recv(1)
    print("closed after %.2f" % (time.monotonic() - t))
    sys.exit(0)
payload = b"x" * 100000
c.sendall(payload)
c.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = c.recv(65536)
    if not b:
        break
    got += b
print("ok" if got == b"echo:" + payload else "mismatch %d" % len(got))
"#;

#[test]
fn redirected_outbound_uses_the_original_destination() {
    let Some(ns) = Netns::new("odst") else {
        eprintln!("skipped: network namespaces need root");
        return;
    };
    ns.sh(
        "ip addr add 10.9.0.1/32 dev lo && ip addr add 10.9.0.2/32 dev lo && \
         ip addr add 10.9.0.3/32 dev lo && \
         iptables -t nat -A OUTPUT -p tcp -d 10.9.0.0/24 \
           -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15001",
    );
    let mut echo_cmd = ns.command(control_bin());
    echo_cmd.args(["echo", "--name", "echo-ns", "--listen", "127.0.0.1:18080"]);
    let (_echo, _) = spawn_until("echo in netns", echo_cmd, "listening on");
    let mut tcp_cmd = ns.command("python3");
    tcp_cmd.args(["-c", TCP_ECHO_PY, "7000"]);
    let (_tcp, _) = spawn_until("tcp echo in netns", tcp_cmd, "listening on");

    let dir = TempDir::new("netns");
    let cfg = dir.path().join("proxy.yaml");
    std::fs::write(
        &cfg,
        "version: netns
services:
  - name: web.default.svc.cluster.local
    hosts: [web.default.svc.cluster.local]
    addresses: [10.9.0.1]
    ports: [{port: 80, protocol: HTTP, targetPort: 18080}]
    endpoints: [{address: 127.0.0.1}]
  - name: db.default.svc.cluster.local
    addresses: [10.9.0.2]
    ports: [{port: 9000, protocol: TCP, targetPort: 7000}, {port: 9001, protocol: TCP, targetPort: 7000}]
    endpoints: [{address: 127.0.0.1}]
    tcpIdleTimeout: 1s
  - name: db-canary
    ports: [{port: 9000, protocol: TCP, targetPort: 7000}]
    endpoints: [{address: 127.0.0.1}]
    tcpIdleTimeout: 1s
virtualHosts:
  - name: db
    hosts: [db.default.svc.cluster.local]
    tcpRoutes:
      - name: canary
        match: [{port: 9000, destinationSubnets: [10.9.0.0/24]}]
        destinations: [{service: db-canary, port: 9000}]
outboundTrafficPolicy: {mode: ALLOW_ANY}
",
    )
    .unwrap();
    let log = dir.path().join("access.log");
    // As Istio does, the proxy runs as uid 1337 so its own upstream connections are not
    // redirected back to itself.
    let mut proxy = Proc::spawn(
        "halyard-proxy in netns",
        ns.command("setpriv")
            .args(["--reuid", "1337", "--regid", "1337", "--clear-groups"])
            .arg(proxy_bin())
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null()),
    );
    wait_for("proxy ready in netns", || {
        if proxy.wait_exit(Duration::ZERO).is_some() {
            panic!("proxy exited early");
        }
        (ns.curl(&["http://127.0.0.1:15000/ready"]).status == 200).then_some(())
    });
    let entries = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };

    // HTTP to the service VIP: the Host header names nothing the proxy knows; the original
    // destination does.
    let out = ns.curl(&["http://10.9.0.1/redirected"]);
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.json()["workload"], "echo-ns");
    let e = wait_for("HTTP log", || {
        entries().into_iter().find(|e| e["path"] == "/redirected")
    });
    assert_eq!(e["upstream_cluster"], "web.default.svc.cluster.local");

    // TCP to a service VIP with a port mapping.
    let run_client = |args: &[&str]| {
        let out = ns
            .command("python3")
            .args(["-c", TCP_CLIENT_PY])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr)
    };
    // Port 9000 of the service takes its TCP route to the canary; 9001 has no route.
    assert_eq!(run_client(&["10.9.0.2", "9000"]), "ok");
    wait_for("TCP log for the canary", || {
        entries()
            .into_iter()
            .find(|e| e["upstream_cluster"] == "db-canary")
    });
    assert_eq!(run_client(&["10.9.0.2", "9001"]), "ok");
    wait_for("TCP log for db", || {
        entries()
            .into_iter()
            .find(|e| e["upstream_cluster"] == "db.default.svc.cluster.local")
    });

    // An address no service has: ALLOW_ANY passes it through to where it was going.
    assert_eq!(run_client(&["10.9.0.3", "7000"]), "ok");
    let e = wait_for("passthrough log", || {
        entries()
            .into_iter()
            .find(|e| e["upstream_cluster"] == "PassthroughCluster")
    });
    assert_eq!(e["upstream_host"], "10.9.0.3:7000");
    assert_eq!(e["protocol"], "TCP");

    // A quiet connection is closed after the service's TCP idle timeout (1 s).
    let idle = run_client(&["10.9.0.2", "9000", "idle"]);
    let secs: f64 = idle
        .strip_prefix("closed after ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("idle client: {idle}"));
    assert!((0.9..3.0).contains(&secs), "closed after {secs} s");

    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(DEADLINE).and_then(|s| s.code()), Some(0));
}
