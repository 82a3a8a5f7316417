//! Table tests: small manifests in, the exact proxy resources out.

use std::path::Path;

use halyard_xds::{string_match, LoadBalancer, MtlsMode, Protocol};

use super::*;

/// Loads `yaml` as a one-file directory; it must be clean.
fn model(yaml: &str) -> Model {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write");
    let (m, diags) = crate::model::load_dir(dir.path());
    let errors: Vec<String> = diags
        .iter()
        .map(ToString::to_string)
        .filter(|d| !d.contains("warning:"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    m
}

const DEMO: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: frontend, namespace: demo, labels: {app: frontend}}
spec: {address: 127.0.0.1, serviceAccount: frontend, ports: {http: 18081}, labels: {app: frontend}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend, namespace: demo}
spec: {address: 127.0.0.1, serviceAccount: backend, ports: {http: 18082}, labels: {app: backend, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend.demo.svc.cluster.local]
  addresses: [240.0.0.2]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: backend}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: frontend, namespace: demo}
spec:
  hosts: [frontend.demo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: frontend}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: demo}
spec:
  hosts: [httpbin.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: demo}
spec:
  host: backend
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {connectTimeout: 2s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: demo}
spec:
  hosts: [backend]
  http:
    - name: admin
      match: [{uri: {prefix: /admin}, headers: {x-user: {exact: ops}}}]
      route: [{destination: {host: backend, port: {number: 8080}}}]
      timeout: 1.5s
    - name: by-regex
      match: [{uri: {regex: "/v[0-9]+/.*"}}]
      route: [{destination: {host: backend}}]
    - route: [{destination: {host: backend}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: backend-metrics, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  portLevelMtls: {"18082": {mode: PERMISSIVE}}
"#;

/// A node's resources as the proxy assembles them.
fn proxy_config(r: &NodeResources) -> halyard_xds::ProxyConfig {
    halyard_xds::ProxyConfig {
        workload: Some(r.workload.clone()),
        services: (*r.services).clone(),
        virtual_hosts: (*r.virtual_hosts).clone(),
        settings: r.mesh.settings,
        outbound_traffic_policy: r.mesh.outbound_traffic_policy,
        ..Default::default()
    }
}

fn demo(placement: &Placement) -> Translation {
    translate(&model(DEMO), placement)
}

#[test]
fn one_node_per_workload_entry_with_its_workload() {
    let t = demo(&Placement::default());
    assert_eq!(
        t.nodes.keys().collect::<Vec<_>>(),
        ["demo/backend", "demo/frontend"]
    );
    let w = &t.nodes["demo/backend"].workload;
    assert_eq!(
        (
            w.name.as_str(),
            w.namespace.as_str(),
            w.service_account.as_str()
        ),
        ("backend", "demo", "backend")
    );
    assert_eq!(w.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(w.ports.len(), 1);
    assert_eq!(
        (w.ports[0].port, w.ports[0].protocol()),
        (18082, Protocol::Http)
    );
    // Namespace STRICT beats the mesh's PERMISSIVE; the selecting policy's port override.
    assert_eq!(w.mtls(), MtlsMode::Strict);
    assert_eq!(w.ports[0].mtls(), MtlsMode::Permissive);
    let f = &t.nodes["demo/frontend"].workload;
    assert_eq!(
        (f.mtls(), f.ports[0].mtls()),
        (MtlsMode::Strict, MtlsMode::MtlsUnset)
    );
}

#[test]
fn services_carry_identities_ports_and_destination_rule_settings() {
    let mut placement = Placement::default();
    placement
        .sidecars
        .insert("demo/backend".into(), "127.0.0.1:15106".parse().unwrap());
    let t = demo(&placement);
    let svcs = &t.nodes["demo/frontend"].services;
    let backend = svcs
        .iter()
        .find(|s| s.name == "backend.demo.svc.cluster.local")
        .unwrap();
    assert_eq!(
        backend.hosts,
        [
            "backend.demo.svc.cluster.local",
            "backend.demo",
            "backend.demo.svc",
            "backend"
        ]
    );
    assert_eq!(backend.addresses, ["240.0.0.2"]);
    assert_eq!(backend.load_balancer(), LoadBalancer::RoundRobin);
    assert_eq!(backend.connect_timeout.as_ref().map(|d| d.seconds), Some(2));
    let e = &backend.endpoints[0];
    assert_eq!(e.identity, "spiffe://cluster.local/ns/demo/sa/backend");
    assert_eq!(e.sidecar_address, "127.0.0.1:15106");
    assert_eq!(e.ports.get("http"), Some(&18082));
    // An external service: no identity, DNS endpoint from its host.
    let ext = svcs.iter().find(|s| s.name == "httpbin.org").unwrap();
    assert_eq!(ext.endpoints[0].address, "httpbin.org");
    assert!(ext.endpoints[0].identity.is_empty());
}

#[test]
fn routes_keep_order_matches_and_timeouts_and_drop_what_they_cannot_evaluate() {
    let t = demo(&Placement::default());
    let vh = &t.nodes["demo/frontend"].virtual_hosts[0];
    assert_eq!(vh.name, "demo/backend");
    assert!(vh.hosts.contains(&"backend".to_string()));
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["admin", "backend.demo.2"]);
    let admin = &vh.routes[0];
    let m = &admin.r#match[0];
    assert_eq!(
        m.uri.as_ref().and_then(|u| u.match_type.clone()),
        Some(string_match::MatchType::Prefix("/admin".into()))
    );
    assert!(m.headers.contains_key("x-user"));
    assert_eq!(
        admin.timeout.as_ref().map(|d| (d.seconds, d.nanos)),
        Some((1, 500_000_000))
    );
    let dest = admin.route.as_ref().unwrap();
    assert_eq!(
        (dest.service.as_str(), dest.port),
        ("backend.demo.svc.cluster.local", 8080)
    );
    assert!(
        t.notes.iter().any(|n| n.contains("by-regex")),
        "{:?}",
        t.notes
    );
}

#[test]
fn translation_is_deterministic_and_its_output_validates() {
    let a = demo(&Placement::default());
    let b = demo(&Placement::default());
    assert_eq!(a.nodes, b.nodes);
    for (node, r) in &a.nodes {
        let errors = halyard_xds::validate(&proxy_config(r));
        assert!(errors.is_empty(), "{node}: {errors:?}");
    }
}

#[test]
fn the_valid_corpus_translates_into_valid_proxy_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/valid");
    let (m, _) = crate::model::load_dir(&dir);
    let t = translate(&m, &Placement::default());
    assert!(!t.nodes.is_empty());
    for (node, r) in &t.nodes {
        let errors = halyard_xds::validate(&proxy_config(r));
        assert!(errors.is_empty(), "{node}: {errors:?}");
    }
}
