//! `halyard-control up` on meshes shaped unlike the quickstart, as a new user writes them:
//! workloads on their own loopback addresses with and without `ports`, a ServiceEntry
//! `targetPort`, several workloads behind one service. For each: `check` accepts the directory,
//! `up` starts, and `frontend → backend` works over mutual TLS (XFCC names the caller), reaches
//! every backend workload, and the AuthorizationPolicy holds. Two workloads on one address and
//! port are refused by both `check` and `up`, naming both.

use std::path::Path;
use std::process::Command;

use halyard_tests::*;

/// One WorkloadEntry of a test mesh.
struct We {
    name: &'static str,
    app: &'static str,
    address: &'static str,
    port: Option<u16>,
}

/// A mesh like the quickstart's: namespace `shapes`, services `frontend` and `backend` on port
/// 8080 (`backend_target` as the backend's `targetPort`), STRICT mTLS, only `frontend` may GET.
fn mesh(workloads: &[We], backend_target: Option<u16>) -> String {
    let mut y = String::from(
        "apiVersion: halyard.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, namespace: \
         istio-system}\nspec: {trustDomain: cluster.local, outboundTrafficPolicy: {mode: \
         REGISTRY_ONLY}}\n",
    );
    for w in workloads {
        let ports = w
            .port
            .map(|p| format!("\n  ports: {{http: {p}}}"))
            .unwrap_or_default();
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {}\n  \
             namespace: shapes\n  labels: {{halyard.dev/demo-app: echo}}\nspec:\n  address: {}\n  \
             serviceAccount: {}{ports}\n  labels: {{app: {}}}\n",
            w.name, w.address, w.app, w.app
        ));
    }
    for (svc, target) in [("frontend", None), ("backend", backend_target)] {
        let target = target
            .map(|t: u16| format!(", targetPort: {t}"))
            .unwrap_or_default();
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {svc}, \
             namespace: shapes}}\nspec:\n  hosts: [{svc}.shapes.svc.cluster.local]\n  location: \
             MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: \
             HTTP{target}}}]\n  workloadSelector: {{labels: {{app: {svc}}}}}\n"
        ));
    }
    y.push_str(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: \
         default, namespace: shapes}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: \
         security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: backend, namespace: \
         shapes}\nspec:\n  selector: {matchLabels: {app: backend}}\n  action: ALLOW\n  rules:\n  \
         - from: [{source: {principals: [cluster.local/ns/shapes/sa/frontend]}}]\n    to: \
         [{operation: {methods: [GET]}}]\n",
    );
    y
}

/// `halyard-control check DIR`: exit code and stdout.
fn check(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(control_bin())
        .arg("check")
        .arg(dir)
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
    )
}

/// What the shapes check of a running `up`.
trait Shapes {
    fn calls_reach(&self, backends: &[&str]);
    fn policy_holds(&self, a_backend: &str);
}

impl Shapes for Up {
    /// `frontend → backend` until every one of `backends` answered; each must see frontend's
    /// identity in XFCC.
    fn calls_reach(&self, backends: &[&str]) {
        let out = self.addr("frontend", "outbound");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..(backends.len() * 20) {
            let r = curl(&["-H", "Host: backend:8080", &url(out, "/hello")]);
            assert_eq!(r.status, 200, "{r:?}\n{}", self.log_text());
            let doc = r.json();
            let xfcc = doc["headers"]["x-forwarded-client-cert"]
                .as_str()
                .unwrap_or_default();
            assert!(
                xfcc.ends_with("URI=spiffe://cluster.local/ns/shapes/sa/frontend"),
                "{xfcc}"
            );
            seen.insert(doc["workload"].as_str().unwrap_or_default().to_string());
            if backends.iter().all(|b| seen.contains(*b)) {
                return;
            }
        }
        panic!("only {seen:?} of {backends:?} answered");
    }

    /// The AuthorizationPolicy: frontend may GET only, and backend's own sidecar may not call.
    fn policy_holds(&self, a_backend: &str) {
        let out = self.addr("frontend", "outbound");
        let r = curl(&["-X", "DELETE", "-H", "Host: backend:8080", &url(out, "/x")]);
        assert_eq!(r.status, 403, "{r:?}");
        let own = self.addr(a_backend, "outbound");
        let r = curl(&["-H", "Host: backend:8080", &url(own, "/hello")]);
        assert_eq!(r.status, 403, "backend calling backend: {r:?}");
    }
}

/// Checks the directory, runs `up`, and drives calls and policy.
fn run_shape(tag: &str, workloads: &[We], target: Option<u16>, apps: &[(&str, &str)]) {
    let tmp = TempDir::new(tag);
    let dir = write_mesh(&tmp, &mesh(workloads, target));
    let (code, out) = check(&dir);
    assert_eq!(code, Some(0), "check refused the mesh:\n{out}");
    let up = Up::start(&tmp, &dir);
    for (name, app) in apps {
        assert_eq!(up.apps(name), vec![app.to_string()], "{name}'s app");
    }
    let backends: Vec<&str> = workloads
        .iter()
        .filter(|w| w.app == "backend")
        .map(|w| w.name)
        .collect();
    up.calls_reach(&backends);
    up.policy_holds(backends[0]);
    up.stop();
}

#[test]
fn own_loopback_addresses_without_ports_serve_the_service_port() {
    run_shape(
        "up-noports",
        &[
            We {
                name: "frontend",
                app: "frontend",
                address: "127.0.10.1",
                port: None,
            },
            We {
                name: "backend",
                app: "backend",
                address: "127.0.10.2",
                port: None,
            },
        ],
        None,
        &[
            ("frontend", "127.0.10.1:8080"),
            ("backend", "127.0.10.2:8080"),
        ],
    );
}

#[test]
fn own_loopback_addresses_without_ports_serve_the_target_port() {
    run_shape(
        "up-target",
        &[
            We {
                name: "frontend",
                app: "frontend",
                address: "127.0.11.1",
                port: None,
            },
            We {
                name: "backend",
                app: "backend",
                address: "127.0.11.2",
                port: None,
            },
        ],
        Some(9090),
        &[("backend", "127.0.11.2:9090")],
    );
}

#[test]
fn own_loopback_addresses_with_ports() {
    run_shape(
        "up-ports",
        &[
            We {
                name: "frontend",
                app: "frontend",
                address: "127.0.12.1",
                port: Some(18091),
            },
            We {
                name: "backend",
                app: "backend",
                address: "127.0.12.2",
                port: Some(18092),
            },
        ],
        None,
        &[
            ("frontend", "127.0.12.1:18091"),
            ("backend", "127.0.12.2:18092"),
        ],
    );
}

#[test]
fn several_workloads_behind_one_service() {
    // Three backends: own addresses without and with ports, and one beside the frontend on
    // 127.0.0.1 with a port of its own.
    let (front, shared) = (free_port(), Some(free_port()));
    run_shape(
        "up-several",
        &[
            We {
                name: "frontend",
                app: "frontend",
                address: "127.0.0.1",
                port: Some(front),
            },
            We {
                name: "backend-a",
                app: "backend",
                address: "127.0.13.2",
                port: None,
            },
            We {
                name: "backend-b",
                app: "backend",
                address: "127.0.13.3",
                port: Some(9191),
            },
            We {
                name: "backend-c",
                app: "backend",
                address: "127.0.0.1",
                port: shared,
            },
        ],
        None,
        &[
            ("backend-a", "127.0.13.2:8080"),
            ("backend-b", "127.0.13.3:9191"),
        ],
    );
}

#[test]
fn an_address_not_on_this_machine_gets_a_loopback_address_of_its_own() {
    run_shape(
        "up-remote",
        &[
            We {
                name: "frontend",
                app: "frontend",
                address: "127.0.15.1",
                port: None,
            },
            We {
                name: "backend",
                app: "backend",
                address: "backend.vm.example",
                port: None,
            },
        ],
        None,
        &[
            ("frontend", "127.0.15.1:8080"),
            ("backend", "127.100.0.1:8080"),
        ],
    );
}

#[test]
fn a_work_dir_inside_the_mesh_dir_is_refused() {
    let tmp = TempDir::new("up-workdir");
    let front = We {
        name: "frontend",
        app: "frontend",
        address: "127.0.16.1",
        port: None,
    };
    let dir = write_mesh(&tmp, &mesh(&[front], None));
    let out = Command::new(control_bin())
        .arg("up")
        .arg(&dir)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .output()
        .expect("run up");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is inside"), "{err}");
}

#[test]
fn two_workloads_on_one_address_and_port_are_refused_by_check_and_up() {
    let tmp = TempDir::new("up-clash");
    let dir = write_mesh(
        &tmp,
        &mesh(
            &[
                We {
                    name: "frontend",
                    app: "frontend",
                    address: "127.0.14.1",
                    port: None,
                },
                We {
                    name: "backend",
                    app: "backend",
                    address: "127.0.14.1",
                    port: None,
                },
            ],
            None,
        ),
    );
    let (code, out) = check(&dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("WorkloadEntry/shapes/backend: spec.address: 127.0.14.1 port 8080 is also served by WorkloadEntry shapes/frontend"),
        "{out}"
    );
    let out = up_command(&tmp, &dir).output().expect("run up");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is also served by WorkloadEntry shapes/frontend"),
        "{err}"
    );
}
