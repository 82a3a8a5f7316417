//! DestinationRule connection pools and consistent hashing, end to end: Istio YAML →
//! `halyard-control serve --config` → xDS → mutual-TLS sidecars, with real echo apps.

use std::net::SocketAddr;

use halyard_tests::*;

/// Sticky instances behind their own sidecars.
const STICKY: usize = 5;

fn workload_entry(name: &str, app: &str, port: u16, sidecar: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: demo
  annotations: {{halyard.dev/sidecar-address: \"{sidecar}\"}}
spec: {{address: 127.0.0.1, serviceAccount: backend, ports: {{http: {port}}}, labels: {{app: {app}}}}}
"
    )
}

const SERVICES: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: frontend, namespace: demo}
spec: {address: 127.0.0.1, serviceAccount: frontend, labels: {app: frontend}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: slow, namespace: demo}
spec:
  hosts: [slow.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: slow}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: slow, namespace: demo}
spec:
  host: slow
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sticky, namespace: demo}
spec:
  hosts: [sticky.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: sticky}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: demo}
spec:
  host: sticky
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
";

/// Ten concurrent 500 ms requests to `slow:8080`; returns (status, seconds) per request.
fn flood(frontend: &Proxy, n: usize) -> Vec<(u16, f64)> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let outbound = frontend.outbound;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let u = url(outbound, &format!("/flood/{i}?delay_ms=500"));
                barrier.wait();
                let lines = curl_lines(&[
                    "-o".into(),
                    "/dev/null".into(),
                    "-H".into(),
                    "Host: slow:8080".into(),
                    "-w".into(),
                    "%{http_code} %{time_total}".into(),
                    u,
                ]);
                let line = lines.first().cloned().unwrap_or_default();
                let (code, secs) = line.split_once(' ').unwrap_or(("0", "0"));
                (code.parse().unwrap_or(0), secs.parse().unwrap_or(f64::NAN))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("curl thread"))
        .collect()
}

#[test]
fn destination_rule_pools_and_consistent_hash_through_the_mesh() {
    let tmp = TempDir::new("mesh-pools");
    let cfg = tmp.path().join("mesh");
    std::fs::create_dir_all(&cfg).expect("config dir");
    demo_tokens(tmp.path(), &[("frontend", "frontend")]);

    let mut apps = Vec::new();
    let mut entries = Vec::new();
    for i in 0..=STICKY {
        let (name, app) = match i {
            0 => ("slow-0".to_string(), "slow"),
            n => (format!("sticky-{n}"), "sticky"),
        };
        let echo = Echo::start(&name);
        let sidecar: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        demo_tokens(tmp.path(), &[(&name, "backend")]);
        let entry = workload_entry(&name, app, echo.port(), sidecar);
        entries.push((name, entry, sidecar));
        apps.push(echo);
    }
    let all: String = entries.iter().map(|e| e.1.as_str()).collect();
    write_atomic(&cfg, "mesh.yaml", &format!("{SERVICES}{all}"));
    let ca = Control::start(tmp.path(), &["--config", s(&cfg)]);
    let _sidecars: Vec<Proxy> = entries
        .iter()
        .map(|(name, _, addr)| ca.sidecar(tmp.path(), name, "backend", &addr.to_string()))
        .collect();
    let frontend = ca.sidecar(tmp.path(), "frontend", "frontend", "127.0.0.1:0");

    // connectionPool: one connection, one pending request; the rest fail fast with 503 UO,
    // although the sidecars multiplex everything over one HTTP/2 mTLS connection.
    let n = 10;
    let results = flood(&frontend, n);
    let rejected: Vec<f64> = results.iter().filter(|r| r.0 == 503).map(|r| r.1).collect();
    let ok: Vec<f64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    eprintln!(
        "pool: {} × 503 in {rejected:?} s, {} × 200 in {ok:?} s",
        rejected.len(),
        ok.len()
    );
    assert_eq!(rejected.len() + ok.len(), n, "200 or 503 only: {results:?}");
    assert!(rejected.len() >= 5, "too few refused: {results:?}");
    assert!(
        ok.len() >= 2,
        "the active and the pending one succeed: {results:?}"
    );
    assert!(
        rejected.iter().all(|s| *s < 0.25),
        "refusals must be quick (the upstream takes 500 ms): {rejected:?}"
    );
    let logged = wait_for("access log lines of the flood", || {
        let l: Vec<_> = frontend
            .access_log()
            .into_iter()
            .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/flood/")))
            .collect();
        (l.len() == n).then_some(l)
    });
    let uo = logged
        .iter()
        .filter(|e| e["response_code"] == 503 && e["response_flags"] == "UO")
        .count();
    assert_eq!(uo, rejected.len(), "503s flagged UO: {logged:?}");

    // consistentHash on a header: every key keeps its instance, and when one instance leaves
    // only its own keys move.
    let keys: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
    let before = workload_per_key(frontend.outbound, "sticky:8080", "x-user", &keys);
    let spread = tally(&before.values().cloned().collect::<Vec<_>>());
    assert_eq!(spread.len(), STICKY, "keys over every instance: {spread:?}");
    let again = workload_per_key(frontend.outbound, "sticky:8080", "x-user", &keys[..100]);
    assert!(
        again.iter().all(|(k, w)| before[k] == *w),
        "a key changed instance without any change"
    );

    let version = frontend.admin("GET", "/config_dump").json()["version"].clone();
    let removed = "sticky-3";
    let rest: String = entries
        .iter()
        .filter(|e| e.0 != removed)
        .map(|e| e.1.as_str())
        .collect();
    write_atomic(&cfg, "mesh.yaml", &format!("{SERVICES}{rest}"));
    wait_for("the frontend's config without sticky-3", || {
        (frontend.admin("GET", "/config_dump").json()["version"] != version).then_some(())
    });
    let after = workload_per_key(frontend.outbound, "sticky:8080", "x-user", &keys);
    let stayers: Vec<&String> = keys.iter().filter(|k| before[*k] != removed).collect();
    let kept = stayers.iter().filter(|k| before[**k] == after[**k]).count();
    let stability = kept as f64 * 100.0 / stayers.len() as f64;
    eprintln!(
        "hash: {kept}/{} keys not on {removed} stayed ({stability:.2} %), spread before {spread:?}",
        stayers.len()
    );
    assert!(stability >= 95.0, "only {stability:.2} % of keys stayed");
    assert!(
        after.values().all(|w| w != removed && !w.is_empty()),
        "every key found a remaining instance"
    );
}
