//! Table tests: small manifests in, the exact proxy resources out.

use std::path::Path;

use halyard_xds::{string_match, LoadBalancer, MtlsMode, Protocol};

use super::*;

mod faults;
mod policy;
mod routing;

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
fn proxy_config(r: &ProxyResources) -> halyard_xds::ProxyConfig {
    let mesh = r.mesh_settings.clone().unwrap_or_default();
    halyard_xds::ProxyConfig {
        workload: r.workload.clone(),
        services: (*r.services).clone(),
        virtual_hosts: (*r.virtual_hosts).clone(),
        settings: mesh.settings,
        outbound_traffic_policy: mesh.outbound_traffic_policy,
        authorization_policies: r.authorization_policies.clone(),
        request_authentications: r.request_authentications.clone(),
        ..Default::default()
    }
}

/// The workload of `node`, which every translated node has.
fn workload<'a>(t: &'a Translation, node: &str) -> &'a halyard_xds::Workload {
    t.nodes[node]
        .workload
        .as_ref()
        .expect("every node has its workload")
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
    let w = workload(&t, "demo/backend");
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
    let f = workload(&t, "demo/frontend");
    assert_eq!(
        (f.mtls(), f.ports[0].mtls()),
        (MtlsMode::Strict, MtlsMode::MtlsUnset)
    );
}

#[test]
fn mesh_settings_reach_every_node() {
    let mesh = |spec: &str| {
        let yaml = format!(
            "{DEMO}---\napiVersion: halyard.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {spec}\n"
        );
        let t = translate(&model(&yaml), &Placement::default());
        let settings = |node: &str| {
            let r = &t.nodes[node];
            r.mesh_settings
                .clone()
                .unwrap_or_default()
                .settings
                .unwrap_or_default()
        };
        let (a, b) = (settings("demo/backend"), settings("demo/frontend"));
        assert_eq!(a, b, "{spec}");
        a
    };
    // (MeshConfig spec, istio metrics, reset denied streams): unset is left to the proxy.
    let cases = [
        ("{}", None, None),
        (
            "{metrics: {enabled: false}, resetDeniedStreams: false}",
            Some(false),
            Some(false),
        ),
        ("{resetDeniedStreams: true}", None, Some(true)),
    ];
    for (spec, metrics, reset) in cases {
        let s = mesh(spec);
        assert_eq!(
            (s.istio_metrics, s.reset_denied_streams),
            (metrics, reset),
            "{spec}"
        );
    }
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

/// Where each node's sidecar sends inbound requests, for a placement.
fn app_addresses(placement: &Placement) -> Vec<(String, String)> {
    demo(placement)
        .nodes
        .iter()
        .map(|(n, r)| {
            let w = r.workload.as_ref().expect("workload");
            (n.clone(), w.ports[0].app_address.clone())
        })
        .collect()
}

#[test]
fn inbound_app_address_follows_the_placement() {
    // With capture (production) the sidecar reaches its app on localhost: no address.
    let none = app_addresses(&Placement::default());
    assert!(none.iter().all(|(_, a)| a.is_empty()), "{none:?}");
    // Placed without capture: the workload's own address; an explicit app address wins.
    let mut placement = Placement::default();
    for node in ["demo/backend", "demo/frontend"] {
        placement
            .sidecars
            .insert(node.into(), "127.0.0.1:15106".parse().unwrap());
    }
    placement
        .apps
        .insert("demo/frontend".into(), "127.100.0.1".parse().unwrap());
    assert_eq!(
        app_addresses(&placement),
        [
            ("demo/backend".to_string(), "127.0.0.1:18082".to_string()),
            ("demo/frontend".to_string(), "127.100.0.1:18081".to_string()),
        ]
    );
}

#[test]
fn workload_ports_come_from_the_entry_then_target_port_then_number() {
    let cases: [(&str, &str, u32); 3] = [
        ("ports: {http: 9000}", ", targetPort: 9100", 9000),
        ("ports: {}", ", targetPort: 9100", 9100),
        ("ports: {}", "", 8080),
    ];
    for (we_ports, target, want) in cases {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: a, \
             namespace: n}}\nspec: {{address: 127.0.0.1, {we_ports}, labels: {{app: a}}}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: a, \
             namespace: n}}\nspec:\n  hosts: [a.n.svc.cluster.local]\n  location: MESH_INTERNAL\n  \
             resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: HTTP{target}}}]\n  \
             workloadSelector: {{labels: {{app: a}}}}\n"
        );
        let t = translate(&model(&yaml), &Placement::default());
        let ports: Vec<u32> = workload(&t, "n/a").ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [want], "{we_ports} {target}");
    }
}

#[test]
fn routes_keep_order_matches_and_timeouts() {
    let t = demo(&Placement::default());
    let vh = &t.nodes["demo/frontend"].virtual_hosts[0];
    assert_eq!(vh.name, "demo/backend");
    assert!(vh.hosts.contains(&"backend".to_string()));
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    // The regex route is no longer left out: the proxy evaluates regex matches.
    assert_eq!(names, ["admin", "by-regex", "backend.demo.2"]);
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
    let dest = &admin.destinations[0];
    assert_eq!(
        (dest.service.as_str(), dest.port, dest.weight),
        ("backend.demo.svc.cluster.local", 8080, 100)
    );
    // A lone destination is also `route`, for proxies that read only that.
    assert_eq!(admin.route.as_ref(), Some(dest));
    assert_eq!(
        vh.routes[1].r#match[0]
            .uri
            .as_ref()
            .and_then(|u| u.match_type.clone()),
        Some(string_match::MatchType::Regex("/v[0-9]+/.*".into()))
    );
    assert!(t.notes.is_empty(), "{:?}", t.notes);
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
    let dir = Path::new("tests/manifests/valid");
    let (m, _) = crate::model::load_dir(dir);
    let t = translate(&m, &Placement::default());
    assert!(!t.nodes.is_empty());
    for (node, r) in &t.nodes {
        let errors = halyard_xds::validate(&proxy_config(r));
        assert!(errors.is_empty(), "{node}: {errors:?}");
    }
    // Every route of the corpus reaches the proxies; the only part left unapplied is the
    // per-port policy, which the proxy has no place for.
    let Some(node) = t.nodes.values().find(|n| {
        n.workload
            .as_ref()
            .is_some_and(|w| w.namespace == "bookinfo")
    }) else {
        panic!("no bookinfo node in {:?}", t.nodes.keys());
    };
    for vs in &m.virtual_services {
        let name = format!("{}/{}", vs.meta.namespace, vs.meta.name);
        let Some(vh) = node.virtual_hosts.iter().find(|v| v.name == name) else {
            panic!("{name} is missing");
        };
        assert_eq!(
            (vh.routes.len(), vh.tcp_routes.len(), vh.tls_routes.len()),
            (vs.spec.http.len(), vs.spec.tcp.len(), vs.spec.tls.len()),
            "{name}"
        );
    }
    assert_eq!(
        t.notes,
        ["DestinationRule bookinfo/details: portLevelSettings not applied yet (the proxy has no per-port policy; the policy for all ports applies)"]
    );
}

#[test]
fn the_quickstart_translates_fully_into_valid_proxy_configs() {
    let dir = Path::new("../examples/quickstart");
    let (m, _) = crate::model::load_dir(dir);
    let t = translate(&m, &Placement::default());
    assert!(t.notes.is_empty(), "{:?}", t.notes);
    let r = &t.nodes["demo/frontend"];
    assert!(halyard_xds::validate(&proxy_config(r)).is_empty());
    let default = r.virtual_hosts[0]
        .routes
        .iter()
        .find(|r| r.name == "default");
    let set = default
        .and_then(|d| d.request_headers.as_ref())
        .and_then(|h| h.set.get("x-halyard-route"));
    assert_eq!(set.map(String::as_str), Some("default"));
}

const POLICIES: &str = r#"
apiVersion: halyard.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {trustDomain: example.org}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all-blocked, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.9.0.0/16]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-callers, namespace: demo, annotations: {"istio.io/dry-run": "true"}}
spec:
  selector: {matchLabels: {app: backend}}
  rules:
    - from:
        - source: {serviceAccounts: [frontend, other/robot]}
        - source: {notPrincipals: [cluster.local/ns/demo/sa/evil]}
      to: [{operation: {methods: [GET], ports: ["8080"], paths: ["/api/*"]}}]
      when: [{key: source.principal, values: [cluster.local/ns/demo/sa/frontend]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: other}
spec: {}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: demo}
spec:
  selector: {matchLabels: {app: backend}}
  jwtRules:
    - issuer: https://issuer.example
      jwksUri: https://issuer.example/keys
      audiences: [backend]
      fromHeaders: [{name: x-token, prefix: "Bearer "}]
      forwardOriginalToken: true
      outputClaimToHeaders: [{header: x-sub, claim: sub}]
      timeout: 2s
"#;

#[test]
fn policies_reach_the_workloads_they_select_in_the_proxies_form() {
    let m = model(&format!("{DEMO}\n---\n{POLICIES}"));
    let t = translate(&m, &Placement::default());
    let names = |n: &str| -> Vec<String> {
        t.nodes[n]
            .authorization_policies
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    // The root namespace's policy applies mesh-wide; the selector picks backend only; a policy
    // of another namespace applies to no demo workload.
    assert_eq!(
        names("demo/backend"),
        ["istio-system/deny-all-blocked", "demo/backend-callers"]
    );
    assert_eq!(names("demo/frontend"), ["istio-system/deny-all-blocked"]);

    let p = &t.nodes["demo/backend"].authorization_policies[1];
    assert!(p.dry_run);
    assert_eq!(p.action(), halyard_xds::authorization_policy::Action::Allow);
    let src = &p.rules[0].from[0];
    // serviceAccounts become principals (bare names in the policy's namespace); principals
    // written with Istio's default trust domain also name the mesh's own.
    assert_eq!(
        src.principals,
        [
            "example.org/ns/demo/sa/frontend",
            "example.org/ns/other/sa/robot"
        ]
    );
    assert_eq!(
        p.rules[0].from[1].not_principals,
        [
            "cluster.local/ns/demo/sa/evil",
            "example.org/ns/demo/sa/evil"
        ]
    );
    let op = &p.rules[0].to[0];
    assert_eq!(
        (op.ports.as_slice(), op.paths.as_slice()),
        (&[8080][..], &["/api/*".to_string()][..])
    );
    assert_eq!(
        p.rules[0].when[0].values,
        [
            "cluster.local/ns/demo/sa/frontend",
            "example.org/ns/demo/sa/frontend"
        ]
    );
    let deny = &t.nodes["demo/backend"].authorization_policies[0];
    assert_eq!(
        deny.action(),
        halyard_xds::authorization_policy::Action::Deny
    );
    assert!(!deny.dry_run);

    let jwt = &t.nodes["demo/backend"].request_authentications;
    assert_eq!(jwt.len(), 1);
    assert!(t.nodes["demo/frontend"].request_authentications.is_empty());
    let rule = &jwt[0].jwt_rules[0];
    assert_eq!(rule.issuer, "https://issuer.example");
    assert_eq!(rule.jwks_uri, "https://issuer.example/keys");
    assert_eq!(rule.from_headers[0].prefix, "Bearer ");
    assert!(rule.forward_original_token);
    assert_eq!(rule.output_claim_to_headers[0].claim, "sub");
    assert_eq!(rule.timeout.map(|d| d.seconds), Some(2));
    let problems = halyard_xds::validate(&proxy_config(&t.nodes["demo/backend"]));
    assert!(problems.is_empty(), "{problems:?}");
}
