//! The control server end to end: Istio YAML in a directory → `halyard-control serve --config`
//! → xDS (delta) → two sidecars that take their certificates from its CA, talk mutual TLS, and
//! follow edits of the directory live, survive the control server's death and converge after
//! its restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use halyard_tests::*;

fn mesh_yaml(backend_app: u16, backend_sidecar: SocketAddr) -> String {
    format!(
        r#"# The quickstart's shape: frontend calls backend over mutual TLS.
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: frontend, namespace: demo}}
spec: {{address: 127.0.0.1, serviceAccount: frontend, labels: {{app: frontend}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: backend
  namespace: demo
  annotations: {{halyard.dev/sidecar-address: "{backend_sidecar}"}}
spec: {{address: 127.0.0.1, serviceAccount: backend, ports: {{http: {backend_app}}}, labels: {{app: backend}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: demo}}
spec:
  hosts: [backend.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: backend}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: demo}}
spec: {{mtls: {{mode: STRICT}}}}
"#
    )
}

fn route_yaml(timeout_ms: u64) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: demo}}
spec:
  hosts: [backend]
  http:
    - name: slow-path
      match: [{{uri: {{prefix: /slow}}}}]
      route: [{{destination: {{host: backend}}}}]
      timeout: {timeout_ms}ms
    - route: [{{destination: {{host: backend}}}}]
"
    )
}

fn sidecar(ca: &Control, dir: &Path, name: &str, inbound: &str) -> Proxy {
    ca.sidecar(dir, name, name, inbound)
}

/// GET `path` from the frontend's app side, to `backend:8080`.
fn call(frontend: &Proxy, path: &str) -> CurlOut {
    curl(&["-H", "Host: backend:8080", &url(frontend.outbound, path)])
}

/// The control server with a config directory, and the two sidecars it configures.
struct Mesh {
    tmp: TempDir,
    cfg: std::path::PathBuf,
    flags: Vec<String>,
    ca: Control,
    backend: Proxy,
    frontend: Proxy,
    _echo: Echo,
}

impl Mesh {
    fn start(tag: &str) -> Mesh {
        let tmp = TempDir::new(tag);
        let cfg = tmp.path().join("mesh");
        std::fs::create_dir_all(&cfg).expect("config dir");
        demo_tokens(
            tmp.path(),
            &[("frontend", "frontend"), ("backend", "backend")],
        );

        let echo = Echo::start("backend");
        let backend_sidecar: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        write_atomic(&cfg, "mesh.yaml", &mesh_yaml(echo.port(), backend_sidecar));
        write_atomic(&cfg, "routes.yaml", &route_yaml(2000));
        // Fixed ports, so that a restarted control server is found where it was.
        let flags: Vec<String> = vec![
            "--config".into(),
            s(&cfg).into(),
            "--grpc-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--grpc-tls-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--monitoring-addr".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        let ca = Self::control(&tmp, &flags);
        let backend = sidecar(&ca, tmp.path(), "backend", &backend_sidecar.to_string());
        let frontend = sidecar(&ca, tmp.path(), "frontend", "127.0.0.1:0");
        Mesh {
            tmp,
            cfg,
            flags,
            ca,
            backend,
            frontend,
            _echo: echo,
        }
    }

    fn control(tmp: &TempDir, flags: &[String]) -> Control {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Control::start(tmp.path(), &flags)
    }
}

#[test]
fn control_server_configures_sidecars_and_edits_go_live_within_a_second() {
    let mesh = Mesh::start("mesh");
    let (cfg, ca, frontend) = (&mesh.cfg, &mesh.ca, &mesh.frontend);

    // Through the mesh: mutual TLS between the sidecars, the caller's identity at the app.
    let out = call(frontend, "/hello");
    assert_eq!(out.status, 200, "{out:?}");
    let xfcc = out.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        xfcc.ends_with("URI=spiffe://cluster.local/ns/demo/sa/frontend"),
        "{xfcc}"
    );
    // The proxy shows what the control server sent and that it ACKed it.
    let dump = frontend.admin("GET", "/config_dump").json();
    assert_eq!(dump["xds"]["connected"], true, "{}", dump["xds"]);
    assert!(
        dump["version"]
            .as_str()
            .unwrap_or("")
            .contains("virtualhost="),
        "{}",
        dump["version"]
    );
    // The control server lists both proxies.
    let monitoring: SocketAddr = ca
        .monitoring
        .as_deref()
        .expect("monitoring address")
        .parse()
        .expect("addr");
    let conns = http(monitoring, "GET", "/debug/connections", &[], b"")
        .expect("debug")
        .text();
    assert!(
        conns.contains("demo/frontend") && conns.contains("demo/backend"),
        "{conns}"
    );

    // Edits go live within a second, every time, with requests flowing.
    let mut worst = Duration::ZERO;
    for round in 0..6 {
        let (timeout, want) = if round % 2 == 0 {
            (300, 504)
        } else {
            (2000, 200)
        };
        write_atomic(cfg, "routes.yaml", &route_yaml(timeout));
        let t0 = Instant::now();
        loop {
            let out = call(frontend, "/slow?delay_ms=600");
            if out.status == want {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "round {round}: still {} after 5 s",
                out.status
            );
        }
        worst = worst.max(t0.elapsed());
    }
    eprintln!("slowest edit until live (including one 0.6 s request): {worst:?}");
    // A request takes up to 0.6 s itself; the change must have landed within a second of the edit.
    assert!(
        worst < Duration::from_millis(1600),
        "slowest edit took {worst:?}"
    );

    // A broken edit: the control server keeps the last good configuration.
    write_atomic(cfg, "routes.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend, namespace: demo}\nspec:\n  hosts: [backend]\n  http:\n    - route: [{destination: {host: nowhere}}]\n      bogus: 1\n");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(call(frontend, "/hello").status, 200);
    assert!(
        ca.stderr().contains("configuration rejected"),
        "{}",
        ca.stderr()
    );

    // The control server dies: traffic keeps flowing on the last configuration.
    let Mesh {
        tmp,
        cfg,
        flags,
        mut ca,
        backend,
        frontend,
        _echo,
    } = mesh;
    ca.proc.signal("KILL");
    let _ = ca.proc.wait_exit(DEADLINE);
    for _ in 0..20 {
        assert_eq!(call(&frontend, "/hello").status, 200);
    }
    // Restarted with a changed directory (same data dir, so the same CA): proxies reconnect
    // and converge on the new routes.
    write_atomic(&cfg, "routes.yaml", &route_yaml(300));
    let _ca = Mesh::control(&tmp, &flags);
    wait_for("the restarted control server's routes", || {
        (call(&frontend, "/slow?delay_ms=600").status == 504).then_some(())
    });
    assert_eq!(call(&frontend, "/hello").status, 200);
    drop(backend);
}

#[test]
fn fifty_edits_under_load_lose_no_request() {
    let mesh = Mesh::start("mesh-edits");
    let target = url(mesh.frontend.outbound, "/load");
    // Steady load through both sidecars for the whole run, from h2load.
    let load = std::thread::spawn(move || {
        std::process::Command::new("h2load")
            .args([
                "--h1",
                "-c",
                "4",
                "-D",
                "20",
                "-H",
                ":authority: backend:8080",
            ])
            .arg(target)
            .output()
            .expect("run h2load (apt-get install nghttp2-client)")
    });
    // 50 edits of the route table; each must be live within a second: the /slow route's
    // timeout flips between 150 ms (a 300 ms answer → 504) and 2 s (→ 200).
    let mut worst = Duration::ZERO;
    for edit in 0..50 {
        let (timeout, want) = if edit % 2 == 0 {
            (150, 504)
        } else {
            (2000, 200)
        };
        write_atomic(&mesh.cfg, "routes.yaml", &route_yaml(timeout));
        let t0 = Instant::now();
        while call(&mesh.frontend, "/slow?delay_ms=300").status != want {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "edit {edit} not live after 5 s"
            );
        }
        worst = worst.max(t0.elapsed());
    }
    let out = load.join().expect("h2load thread");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no h2load summary: {report}"));
    let codes = report
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_default();
    eprintln!(
        "50 edits, slowest until live {worst:?} (incl. a 0.3 s probe); load: {line}; {codes}"
    );
    assert!(line.contains(" 0 failed, 0 errored"), "{report}");
    assert!(codes.contains(" 0 4xx, 0 5xx"), "{codes}");
    assert!(
        worst < Duration::from_millis(1300),
        "slowest edit took {worst:?}"
    );
}

/// Istio security resources as people write them, with `source`/`operation` wrappers.
fn security_yaml(issuer: &str, allowed_caller: &str, deny_admin: bool) -> String {
    let mut y = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  jwtRules:
    - issuer: "{issuer}"
      audiences: [backend]
      outputClaimToHeaders: [{{header: x-user, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend-callers, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/demo/sa/{allowed_caller}"]
            requestPrincipals: ["{issuer}/*"]
"#
    );
    if deny_admin {
        y.push_str(
            r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
    - to: [{operation: {paths: ["/admin*"]}}]
"#,
        );
    }
    y
}

#[test]
fn istio_security_resources_are_enforced_and_follow_edits() {
    let mesh = Mesh::start("mesh-policy");
    let issuer = Issuer::start();
    let iss = issuer.url();
    let token = issuer.token("alg=ES256&sub=carol&aud=backend");
    let call_with = |path: &str, token: &str| -> CurlOut {
        curl(&[
            "-H",
            "Host: backend:8080",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &url(mesh.frontend.outbound, path),
        ])
    };
    // Polls until `path` answers `want`, within a second of the edit.
    let live_within_a_second = |what: &str, path: &str, token: &str, want: u16| {
        let t0 = Instant::now();
        loop {
            let got = call_with(path, token).status;
            if got == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "{what}: still {got} after 1 s"
            );
        }
    };

    write_atomic(
        &mesh.cfg,
        "security.yaml",
        &security_yaml(&iss, "frontend", false),
    );
    // Live once a caller without a token is refused.
    let took = live_within_a_second("policies arrive", "/hello", "", 403);
    let r = call_with("/hello", &token);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["headers"]["x-user"], "carol", "{r:?}");
    // The ALLOW needs both the caller's certificate and a token.
    assert_eq!(call(&mesh.frontend, "/hello").status, 403);
    let bad = issuer.token("alg=ES256&sub=carol&aud=someone-else");
    assert_eq!(call_with("/hello", &bad).status, 401);

    // A mesh-wide DENY added in the root namespace.
    write_atomic(
        &mesh.cfg,
        "security.yaml",
        &security_yaml(&iss, "frontend", true),
    );
    let took_deny = live_within_a_second("the DENY arrives", "/admin/x", &token, 403);
    assert_eq!(call_with("/hello", &token).status, 200);
    // Only another service account may call now: frontend is refused.
    write_atomic(
        &mesh.cfg,
        "security.yaml",
        &security_yaml(&iss, "reports", true),
    );
    let took_allow = live_within_a_second("the narrower ALLOW arrives", "/hello", &token, 403);
    eprintln!("policy edits live after {took:?}, {took_deny:?}, {took_allow:?}");

    let e = mesh.backend.wait_log("the denied request", |e| {
        e["response_code"] == 403 && e["path"] == "/admin/x"
    });
    assert_eq!(e["rbac_policy"], "istio-system/no-admin", "{e}");
    assert_eq!(
        e["downstream_peer_uri_san"],
        "spiffe://cluster.local/ns/demo/sa/frontend"
    );
}

/// Istio traffic YAML through the control server: a DestinationRule with subsets and a
/// VirtualService with a header canary, a 90/10 split and retries, over four sidecars talking
/// mutual TLS; one v1 instance fails half of its requests: retries hide it and outlier
/// detection ejects it.
#[test]
fn istio_traffic_yaml_routes_splits_retries_and_ejects_through_the_mesh() {
    let tmp = TempDir::new("mesh-traffic");
    let cfg = tmp.path().join("mesh");
    std::fs::create_dir_all(&cfg).expect("config dir");
    demo_tokens(tmp.path(), &[]);
    let backends = [
        ("v1a", "v1", false),
        ("v1b", "v1", true),
        ("v2", "v2", false),
    ];
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: frontend, namespace: demo}
spec: {address: 127.0.0.1, serviceAccount: frontend, labels: {app: frontend}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: backend}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend]
  http:
    - name: canary
      match: [{headers: {x-canary: {exact: 'yes'}}}]
      route: [{destination: {host: backend, subset: v2}}]
    - name: split
      route:
        - {destination: {host: backend, subset: v1}, weight: 90}
        - {destination: {host: backend, subset: v2}, weight: 10}
      retries: {attempts: 3, retryOn: 5xx}
",
    );
    let mut echoes = Vec::new();
    let mut sidecars = Vec::new();
    for (name, version, flaky) in backends {
        let flags: &[&str] = if flaky {
            &["--fail-percent", "50"]
        } else {
            &[]
        };
        let echo = Echo::start_with(&format!("backend-{name}"), "127.0.0.1:0", flags);
        let sidecar: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        yaml += &format!(
            "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: backend-{name}
  namespace: demo
  annotations: {{halyard.dev/sidecar-address: \"{sidecar}\"}}
spec: {{address: 127.0.0.1, serviceAccount: backend, ports: {{http: {}}}, labels: {{app: backend, version: {version}}}}}
",
            echo.port()
        );
        demo_tokens(tmp.path(), &[(&format!("backend-{name}"), "backend")]);
        sidecars.push((format!("backend-{name}"), sidecar));
        echoes.push(echo);
    }
    demo_tokens(tmp.path(), &[("frontend", "frontend")]);
    write_atomic(&cfg, "mesh.yaml", &yaml);
    let ca = Control::start(tmp.path(), &["--config", s(&cfg)]);
    let _backends: Vec<Proxy> = sidecars
        .iter()
        .map(|(name, addr)| ca.sidecar(tmp.path(), name, "backend", &addr.to_string()))
        .collect();
    let frontend = sidecar(&ca, tmp.path(), "frontend", "127.0.0.1:0");

    // The header canary goes to v2 only.
    for _ in 0..20 {
        let out = curl(&[
            "-H",
            "Host: backend:8080",
            "-H",
            "x-canary: yes",
            &url(frontend.outbound, "/canary"),
        ]);
        assert_eq!(out.status, 200, "{out:?}");
        assert_eq!(out.json()["workload"], "backend-v2");
    }

    // The split, with retries hiding the flaky v1 instance (curl: one connection, 1,000 requests).
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-H",
            "Host: backend:8080",
            "-w",
            "%{http_code} %header{x-echo-workload}\\n",
            &url(frontend.outbound, "/split/[1-1000]"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1000, "curl printed {} lines", lines.len());
    let ok = lines.iter().filter(|l| l.starts_with("200 ")).count();
    let v2 = lines.iter().filter(|l| l.ends_with("backend-v2")).count();
    let v1b = lines.iter().filter(|l| l.ends_with("backend-v1b")).count();
    eprintln!("split: {ok}/1000 ok, v2 {v2}, v1b answered {v1b}");
    assert!(
        ok >= 999,
        "retries should hide the flaky instance: {ok}/1000 succeeded"
    );
    assert!(
        (50..=150).contains(&v2),
        "v2 should get about 10 % of 1,000 requests, got {v2}"
    );
    // Outlier detection ejects the flaky instance after a few failures in a row: without it,
    // it would answer about half of v1's ~450 requests with 200.
    assert!(
        v1b < 100,
        "the flaky instance should be ejected early, yet it answered {v1b}"
    );
    let ejected = frontend
        .metric("halyard_outlier_ejections_total")
        .unwrap_or(0.0);
    assert!(ejected >= 1.0, "ejections counted: {ejected}");
    let retried = frontend
        .metric("halyard_upstream_rq_retry_total")
        .unwrap_or(0.0);
    assert!(
        retried >= 1.0,
        "retries before the ejection counted: {retried}"
    );
}
