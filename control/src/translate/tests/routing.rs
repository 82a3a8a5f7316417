//! Table tests for VirtualService translation: matches, weighted destinations, redirects,
//! rewrites, header operations, mirrors, TCP and TLS routes, unknown destinations.

use std::collections::HashMap;

use halyard_xds::{
    string_match, HeaderOps, HttpMatch, HttpRoute, L4Match, L4Route, Mirror, Redirect, Rewrite,
    RouteDestination, StringMatch, VirtualHost,
};

use super::{model, proxy_config, translate, Placement, Translation};

const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const DB: &str = "db.shop.svc.cluster.local";

/// A namespace with a client, reviews in three versions, a database with inline endpoints and
/// an external TLS API.
const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: shop}
spec: {address: 10.1.0.1, serviceAccount: client, labels: {app: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 10.1.0.11, serviceAccount: reviews, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: shop}
spec: {address: 10.1.0.12, serviceAccount: reviews, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3, namespace: shop}
spec: {address: 10.1.0.13, serviceAccount: reviews, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  addresses: [240.0.0.9]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints:
    - {address: 10.1.0.21, labels: {role: primary}}
    - {address: 10.1.0.22, labels: {role: replica}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
    - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db
  subsets:
    - {name: primary, labels: {role: primary}}
    - {name: replica, labels: {role: replica}}
"#;

/// BASE plus `extra` (VirtualServices), checked and translated; every node's config validates.
pub(super) fn translated(extra: &str) -> Translation {
    let t = translate(
        &model(&format!("{BASE}\n---\n{extra}")),
        &Placement::default(),
    );
    for (node, r) in &t.nodes {
        let errors = halyard_xds::validate(&proxy_config(r));
        assert!(errors.is_empty(), "{node}: {errors:?}");
    }
    t
}

/// The client's virtual host `shop/<name>`.
pub(super) fn vhost<'a>(t: &'a Translation, name: &str) -> &'a VirtualHost {
    let want = format!("shop/{name}");
    t.nodes["shop/client"]
        .virtual_hosts
        .iter()
        .find(|v| v.name == want)
        .unwrap_or_else(|| panic!("no virtual host {want}"))
}

pub(super) fn route<'a>(vh: &'a VirtualHost, name: &str) -> &'a HttpRoute {
    vh.routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name} in {:?}", vh.routes))
}

/// A reviews VirtualService with these HTTP routes (YAML list items, 4-space indented).
pub(super) fn reviews_vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

fn dest(subset: &str, weight: u32) -> RouteDestination {
    RouteDestination {
        service: REVIEWS.into(),
        subset: subset.into(),
        weight,
        ..Default::default()
    }
}

fn sm(t: string_match::MatchType) -> StringMatch {
    StringMatch {
        match_type: Some(t),
    }
}
fn exact(s: &str) -> StringMatch {
    sm(string_match::MatchType::Exact(s.into()))
}
fn prefix(s: &str) -> StringMatch {
    sm(string_match::MatchType::Prefix(s.into()))
}
fn regex(s: &str) -> StringMatch {
    sm(string_match::MatchType::Regex(s.into()))
}
fn present() -> StringMatch {
    StringMatch { match_type: None }
}

fn map<V: Clone>(pairs: &[(&str, V)]) -> HashMap<String, V> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn weighted_splits_keep_subsets_weights_and_destination_headers() {
    let t = translated(&reviews_vs(
        r#"    - name: split
      route:
        - destination: {host: reviews, subset: v1}
          weight: 75
        - destination: {host: reviews.shop.svc.cluster.local, subset: v3, port: {number: 9080}}
          weight: 25
          headers:
            request: {set: {X-Canary: "true"}}
            response: {remove: [x-version]}
    - name: all-v1
      route:
        - {destination: {host: reviews, subset: v1}, weight: 100}
        - {destination: {host: reviews, subset: v2}}
    - name: single
      route: [{destination: {host: reviews, subset: v2}, weight: 30}]
"#,
    ));
    let vh = vhost(&t, "reviews");
    let split = route(vh, "split");
    let canary = RouteDestination {
        port: 9080,
        request_headers: Some(HeaderOps {
            set: map(&[("x-canary", "true".to_string())]),
            ..Default::default()
        }),
        response_headers: Some(HeaderOps {
            remove: vec!["x-version".into()],
            ..Default::default()
        }),
        ..dest("v3", 25)
    };
    assert_eq!(split.destinations, [dest("v1", 75), canary]);
    assert_eq!(split.route, None, "a split is only `destinations`");
    // Among several destinations an unset weight is 0.
    assert_eq!(
        route(vh, "all-v1").destinations,
        [dest("v1", 100), dest("v2", 0)]
    );
    // A lone destination takes all traffic, whatever its weight says (Istio).
    let single = route(vh, "single");
    assert_eq!(single.destinations, [dest("v2", 100)]);
    assert_eq!(single.route, Some(dest("v2", 100)));
    assert!(t.notes.is_empty(), "{:?}", t.notes);
}

#[test]
fn header_canary_matches_carry_every_condition() {
    let t = translated(&reviews_vs(
        r#"    - name: canary
      match:
        - name: jason
          headers:
            end-user: {exact: jason}
            x-debug: {}
            x-build: {regex: "v[0-9]+"}
            x-tier: {prefix: gold}
          withoutHeaders:
            x-opt-out: {}
            x-region: {exact: eu}
          queryParams:
            mode: {exact: canary}
            id: {regex: "[0-9]+"}
          uri: {prefix: /Reviews}
          ignoreUriCase: true
          method: {exact: GET}
          authority: {regex: "reviews(:9080)?"}
          scheme: {exact: http}
          port: 9080
          sourceLabels: {app: client}
          sourceNamespace: shop
          gateways: [mesh]
        - uri: {exact: /health}
      route: [{destination: {host: reviews, subset: v2}}]
    - route: [{destination: {host: reviews, subset: v1}}]
"#,
    ));
    let vh = vhost(&t, "reviews");
    let canary = route(vh, "canary");
    let jason = HttpMatch {
        name: "jason".into(),
        headers: map(&[
            ("end-user", exact("jason")),
            ("x-debug", present()),
            ("x-build", regex("v[0-9]+")),
            ("x-tier", prefix("gold")),
        ]),
        without_headers: map(&[("x-opt-out", present()), ("x-region", exact("eu"))]),
        query_params: map(&[("mode", exact("canary")), ("id", regex("[0-9]+"))]),
        uri: Some(prefix("/Reviews")),
        ignore_uri_case: true,
        method: Some(exact("GET")),
        authority: Some(regex("reviews(:9080)?")),
        scheme: Some(exact("http")),
        port: 9080,
        source_labels: map(&[("app", "client".to_string())]),
        source_namespace: "shop".into(),
    };
    let health = HttpMatch {
        uri: Some(exact("/health")),
        ..Default::default()
    };
    assert_eq!(canary.r#match, [jason, health]);
    // The catch-all keeps its place after the canary, with a generated name.
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["canary", "reviews.shop.1"]);
    assert!(vh.routes[1].r#match.is_empty());
    assert!(t.notes.is_empty(), "{:?}", t.notes);
}

#[test]
fn redirects_rewrites_and_header_operations() {
    let t = translated(&reviews_vs(
        r#"    - name: moved
      match: [{uri: {prefix: /old}}]
      redirect: {uri: /new, authority: reviews.example.com, port: 8443, scheme: https, redirectCode: 308}
    - name: moved-default
      match: [{uri: {exact: /legacy}}]
      redirect: {uri: /}
    - name: rewritten
      match: [{uri: {prefix: /api/v1}}]
      rewrite: {uri: /v1, authority: reviews-internal}
      headers:
        request: {set: {x-api: v1}, add: {x-trace: "1"}, remove: [cookie]}
        response: {add: {x-served-by: halyard}}
      route: [{destination: {host: reviews}}]
"#,
    ));
    let vh = vhost(&t, "reviews");
    let moved = route(vh, "moved");
    assert_eq!(
        moved.redirect,
        Some(Redirect {
            uri: "/new".into(),
            authority: "reviews.example.com".into(),
            port: 8443,
            scheme: "https".into(),
            code: 308,
        })
    );
    assert!(moved.destinations.is_empty() && moved.route.is_none());
    // Istio's default redirect code.
    assert_eq!(
        route(vh, "moved-default").redirect,
        Some(Redirect {
            uri: "/".into(),
            code: 301,
            ..Default::default()
        })
    );
    let rw = route(vh, "rewritten");
    assert_eq!(
        rw.rewrite,
        Some(Rewrite {
            uri: "/v1".into(),
            authority: "reviews-internal".into(),
        })
    );
    assert_eq!(
        rw.request_headers,
        Some(HeaderOps {
            set: map(&[("x-api", "v1".to_string())]),
            add: map(&[("x-trace", "1".to_string())]),
            remove: vec!["cookie".into()],
        })
    );
    assert_eq!(
        rw.response_headers,
        Some(HeaderOps {
            add: map(&[("x-served-by", "halyard".to_string())]),
            ..Default::default()
        })
    );
    assert_eq!(rw.destinations, [dest("", 100)]);
    assert_eq!(route(vh, "moved").request_headers, None);
}

#[test]
fn mirrors_with_their_percentages() {
    let t = translated(&reviews_vs(
        r#"    - name: mirror-percentage
      match: [{uri: {prefix: /a}}]
      route: [{destination: {host: reviews, subset: v1}}]
      mirror: {host: reviews, subset: v2}
      mirrorPercentage: {value: 12.5}
    - name: mirror-percent
      match: [{uri: {prefix: /b}}]
      route: [{destination: {host: reviews, subset: v1}}]
      mirror: {host: reviews, subset: v3}
      mirrorPercent: 5
    - name: mirror-all
      match: [{uri: {prefix: /c}}]
      route: [{destination: {host: reviews, subset: v1}}]
      mirror: {host: reviews, subset: v2}
    - name: mirrors
      route: [{destination: {host: reviews, subset: v1}}]
      mirrors:
        - destination: {host: reviews, subset: v2}
          percentage: {value: 30}
        - destination: {host: reviews, subset: v3, port: {number: 9080}}
"#,
    ));
    let vh = vhost(&t, "reviews");
    let mirror = |subset: &str, port: u32, percent: Option<f64>| Mirror {
        destination: Some(RouteDestination {
            port,
            ..dest(subset, 0)
        }),
        percent,
    };
    let cases = [
        ("mirror-percentage", vec![mirror("v2", 0, Some(12.5))]),
        ("mirror-percent", vec![mirror("v3", 0, Some(5.0))]),
        // No percentage: every request (the proxy's default, 100 %).
        ("mirror-all", vec![mirror("v2", 0, None)]),
        (
            "mirrors",
            vec![mirror("v2", 0, Some(30.0)), mirror("v3", 9080, None)],
        ),
    ];
    for (name, want) in cases {
        assert_eq!(route(vh, name).mirrors, want, "{name}");
    }
    assert!(t.notes.is_empty(), "{:?}", t.notes);
}

#[test]
fn tcp_and_tls_routes() {
    let t = translated(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  tcp:
    - match:
        - port: 5432
          destinationSubnets: [240.0.0.9/32, 10.1.0.0/24]
          sourceLabels: {app: client}
          sourceNamespace: shop
      route:
        - destination: {host: db, subset: primary, port: {number: 5432}}
          weight: 80
        - destination: {host: db, subset: replica}
          weight: 20
    - match: [{sourceSubnet: 10.9.0.0/16}]
      route: [{destination: {host: db, subset: replica}}]
    - route: [{destination: {host: db}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  tls:
    - match: [{port: 443, sniHosts: [api.example.com], sourceNamespace: shop}]
      route: [{destination: {host: api.example.com, port: {number: 443}}}]
"#,
    );
    let db = |subset: &str, port: u32, weight: u32| RouteDestination {
        service: DB.into(),
        subset: subset.into(),
        port,
        weight,
        ..Default::default()
    };
    let vh = vhost(&t, "db");
    assert!(vh.routes.is_empty() && vh.tls_routes.is_empty());
    assert_eq!(
        vh.tcp_routes,
        [
            L4Route {
                name: "db.shop.tcp.0".into(),
                r#match: vec![L4Match {
                    port: 5432,
                    destination_subnets: vec!["240.0.0.9/32".into(), "10.1.0.0/24".into()],
                    source_labels: map(&[("app", "client".to_string())]),
                    source_namespace: "shop".into(),
                    ..Default::default()
                }],
                destinations: vec![db("primary", 5432, 80), db("replica", 0, 20)],
            },
            // The sourceSubnet route is left out: it would otherwise match every connection.
            L4Route {
                name: "db.shop.tcp.2".into(),
                r#match: Vec::new(),
                destinations: vec![db("", 0, 100)],
            },
        ]
    );
    let api = vhost(&t, "api");
    assert_eq!(
        api.tls_routes,
        [L4Route {
            name: "api.shop.tls.0".into(),
            r#match: vec![L4Match {
                port: 443,
                sni_hosts: vec!["api.example.com".into()],
                source_namespace: "shop".into(),
                ..Default::default()
            }],
            destinations: vec![RouteDestination {
                service: "api.example.com".into(),
                port: 443,
                weight: 100,
                ..Default::default()
            }],
        }]
    );
    assert_eq!(
        t.notes,
        [
            "VirtualService shop/db: route `db.shop.tcp.1`: a match on sourceSubnet is not applied yet; that match is left out",
            "VirtualService shop/db: route `db.shop.tcp.1`: no match left; the route is left out",
        ]
    );
}

#[test]
fn routes_to_unknown_services_are_left_out_with_a_note() {
    // The check reports the unknown host; translation still runs on what it can use.
    let dir = tempfile::tempdir().expect("tempdir");
    let vs = reviews_vs(
        r#"    - name: lost
      match: [{uri: {prefix: /lost}}]
      route: [{destination: {host: nowhere.example.com}}]
    - name: kept
      route: [{destination: {host: reviews, subset: v1}}]
      mirror: {host: nowhere.example.com}
"#,
    );
    std::fs::write(dir.path().join("mesh.yaml"), format!("{BASE}\n---\n{vs}")).expect("write");
    let (m, diags) = crate::model::load_dir(dir.path());
    assert!(!diags.is_empty());
    let t = translate(&m, &Placement::default());
    let vh = vhost(&t, "reviews");
    let kept = route(vh, "kept");
    assert_eq!(vh.routes.len(), 1);
    assert!(kept.mirrors.is_empty());
    assert_eq!(
        t.notes,
        [
            "VirtualService shop/reviews: route `kept`: mirror left out: unknown destination host nowhere.example.com",
            "VirtualService shop/reviews: route `lost`: unknown destination host nowhere.example.com; the route is left out",
        ]
    );
}
