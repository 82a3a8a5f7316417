//! `halyard-control up examples/quickstart`: the README's first command, as a user runs it —
//! the whole mesh on loopback, certificates and config from the control server, traffic over
//! mutual TLS, log lines prefixed per child, and a graceful stop on SIGTERM.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use halyard_tests::*;

#[test]
fn up_runs_the_quickstart_mesh_and_stops_on_sigterm() {
    let tmp = TempDir::new("up");
    let state = tmp.path().join("state.json");
    let log = tmp.path().join("up.log");
    let quickstart = halyard_tests::repo_dir().join("examples/quickstart");
    let mut cmd = Command::new(control_bin());
    cmd.arg("up")
        .arg(&quickstart)
        .arg("--state-file")
        .arg(&state)
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .arg("--proxy-bin")
        .arg(proxy_bin())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::inherit());
    let mut up = Proc::spawn("halyard-control up", &mut cmd);
    let state: Value = wait_for("up's state file", || {
        if let Some(s) = up.wait_exit(Duration::ZERO) {
            panic!(
                "up exited early: {s}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        serde_json::from_str(&std::fs::read_to_string(&state).ok()?).ok()
    });
    let workload = |name: &str| -> Value {
        state["workloads"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} in {state}"))
    };
    let (frontend, backend) = (workload("frontend"), workload("backend"));
    assert_eq!(
        backend["identity"],
        "spiffe://cluster.local/ns/demo/sa/backend"
    );
    let addr = |w: &Value, k: &str| -> SocketAddr {
        w[k].as_str().and_then(|s| s.parse().ok()).expect("address")
    };
    let out = addr(&frontend, "outbound");

    // frontend → backend over mutual TLS; the backend app sees who called.
    let r = curl(&["-H", "Host: backend:8080", &url(out, "/hello")]);
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json();
    assert_eq!(doc["workload"], "backend", "{doc}");
    let xfcc = doc["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.ends_with("URI=spiffe://cluster.local/ns/demo/sa/frontend"),
        "{xfcc}"
    );
    // The quickstart's VirtualService: /slow has a 500 ms timeout.
    let r = curl(&["-H", "Host: backend:8080", &url(out, "/slow?delay_ms=900")]);
    assert_eq!(r.status, 504, "{r:?}");
    // The AuthorizationPolicy: frontend may GET and POST, nothing else; nobody else may call.
    let r = curl(&[
        "-X",
        "DELETE",
        "-H",
        "Host: backend:8080",
        &url(out, "/items/1"),
    ]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body.trim(), "RBAC: access denied");
    let r = curl(&[
        "-H",
        "Host: backend:8080",
        &url(addr(&backend, "outbound"), "/hello"),
    ]);
    assert_eq!(r.status, 403, "backend calling itself: {r:?}");
    // REGISTRY_ONLY: unknown hosts are refused.
    let r = curl(&["-H", "Host: unknown.example", &url(out, "/")]);
    assert_eq!(r.status, 502, "{r:?}");
    // STRICT: plaintext straight to the backend's sidecar is refused.
    let r = curl(&[&url(addr(&backend, "inbound"), "/")]);
    assert_eq!(r.status, 0, "{r:?}");
    // Istio's metrics on the backend's scrape port name both sides of the quickstart mesh.
    let metrics = backend["metrics"].as_str().unwrap_or_default().to_string();
    let scrape = metrics
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .and_then(|(a, p)| Some((a.parse::<SocketAddr>().ok()?, format!("/{p}"))))
        .unwrap_or_else(|| panic!("metrics URL {metrics}"));
    let text = http(scrape.0, "GET", &scrape.1, &[], b"")
        .expect("scrape")
        .text();
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("no istio_requests_total 200 line in:\n{text}"));
    for label in [
        "reporter=\"destination\"",
        "source_workload=\"frontend\"",
        "source_workload_namespace=\"demo\"",
        "source_principal=\"spiffe://cluster.local/ns/demo/sa/frontend\"",
        "destination_workload=\"backend\"",
        "destination_service=\"backend.demo.svc.cluster.local\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(label), "{label} missing in {line}");
    }
    // Each child's lines come through prefixed with its name.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for prefix in ["[control]", "[demo/backend sidecar]", "[demo/frontend app]"] {
        assert!(text.contains(prefix), "no {prefix} lines in:\n{text}");
    }

    up.signal("TERM");
    let status = up.wait_exit(DEADLINE).expect("up stops after SIGTERM");
    assert_eq!(status.code(), Some(0));
    // Nothing is left listening.
    assert!(
        std::net::TcpStream::connect(out).is_err(),
        "the frontend sidecar survived"
    );
}
