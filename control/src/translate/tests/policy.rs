//! Table tests for DestinationRule translation: load balancing and consistent hashing,
//! connection-pool limits, outlier detection with Istio's defaults, subsets and their merged
//! policies, and notes for what the proxy does not apply.

use std::collections::BTreeMap;

use halyard_xds::{
    consistent_hash, ConnectionPool, ConsistentHash, LoadBalancer, OutlierDetection, Service,
    TrafficPolicy,
};

use super::{model, proxy_config, translate, Placement};

/// A ServiceEntry `name` with `endpoints` inline endpoints (labelled version v1, v2, v1, …)
/// and a DestinationRule for it whose spec continues with `rule` (2-space indented lines).
fn service(name: &str, endpoints: usize, rule: &str) -> String {
    let eps: String = (0..endpoints)
        .map(|i| {
            format!(
                "    - {{address: 10.2.0.{}, labels: {{version: v{}}}}}\n",
                i + 1,
                i % 2 + 1
            )
        })
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
{eps}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: shop}}
spec:
  host: {name}
{rule}
---
"#
    )
}

/// The services one client in `shop` sees, by short name, and the notes; every proxy config
/// validates.
fn services(docs: &[String]) -> (BTreeMap<String, Service>, Vec<String>) {
    let client = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: client, namespace: shop}\nspec: {address: 10.1.0.1, labels: {app: client}}\n";
    let t = translate(
        &model(&format!("{}{client}", docs.concat())),
        &Placement::default(),
    );
    let node = &t.nodes["shop/client"];
    let errors = halyard_xds::validate(&proxy_config(node));
    assert!(errors.is_empty(), "{errors:?}");
    let by_name = node
        .services
        .iter()
        .map(|s| {
            let short = s.name.split('.').next().unwrap_or_default().to_string();
            (short, s.clone())
        })
        .collect();
    (by_name, t.notes)
}

fn secs(seconds: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds, nanos: 0 })
}

fn millis(ms: i32) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    })
}

/// Outlier detection as Istio fills it in for an empty block.
fn istio_outlier() -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: 5,
        consecutive_gateway_errors: 0,
        interval: secs(10),
        base_ejection_time: secs(30),
        max_ejection_percent: Some(10),
        min_health_percent: 0,
    }
}

#[test]
fn subsets_merge_their_policy_over_the_rules_block_by_block() {
    let (svcs, notes) = services(&[service(
        "reviews",
        4,
        r#"  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 1s}}
    outlierDetection: {consecutive5xxErrors: 3}
  subsets:
    - name: v1
      labels: {version: v1}
    - name: v2
      labels: {version: v2}
      trafficPolicy:
        loadBalancer: {consistentHash: {httpHeaderName: X-User, ringHash: {minimumRingSize: 10}}}
    - name: v3
      labels: {version: v1}
      trafficPolicy:
        connectionPool: {http: {http2MaxRequests: 5}}
        outlierDetection: {consecutiveGatewayErrors: 2}"#,
    )]);
    let s = &svcs["reviews"];
    let pool = ConnectionPool {
        max_connections: 10,
        ..Default::default()
    };
    let outlier = OutlierDetection {
        consecutive_5xx: 3,
        ..istio_outlier()
    };
    assert_eq!(s.load_balancer(), LoadBalancer::RoundRobin);
    assert_eq!(s.connection_pool, Some(pool));
    assert_eq!(s.connect_timeout, secs(1));
    assert_eq!(s.outlier_detection, Some(outlier));
    assert_eq!(s.consistent_hash, None);

    let names: Vec<&str> = s.subsets.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["v1", "v2", "v3"]);
    assert_eq!(
        s.subsets[1].labels.get("version").map(String::as_str),
        Some("v2")
    );
    // No policy of its own: the service's applies.
    assert_eq!(s.subsets[0].traffic_policy, None);
    // Its loadBalancer block replaces the rule's (no ROUND_ROBIN left); pool and outlier
    // detection are the rule's. Ring of 10 over the subset's 2 endpoints: 5 points each.
    assert_eq!(
        s.subsets[1].traffic_policy,
        Some(TrafficPolicy {
            load_balancer: LoadBalancer::LeastRequest as i32,
            consistent_hash: Some(ConsistentHash {
                key: Some(consistent_hash::Key::Header("x-user".into())),
                points_per_endpoint: 5,
            }),
            connection_pool: Some(pool),
            outlier_detection: Some(outlier),
            connect_timeout: secs(1),
            ..Default::default()
        })
    );
    // Its connectionPool block replaces the rule's whole block (maxConnections and
    // connectTimeout are gone); its outlierDetection gets Istio's defaults, not the rule's 3.
    assert_eq!(
        s.subsets[2].traffic_policy,
        Some(TrafficPolicy {
            load_balancer: LoadBalancer::RoundRobin as i32,
            connection_pool: Some(ConnectionPool {
                max_requests: 5,
                ..Default::default()
            }),
            outlier_detection: Some(OutlierDetection {
                consecutive_gateway_errors: 2,
                ..istio_outlier()
            }),
            ..Default::default()
        })
    );
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn load_balancers_and_consistent_hash_variants() {
    let lb = |spec: &str| format!("  trafficPolicy:\n    loadBalancer: {spec}");
    let (svcs, notes) = services(&[
        service(
            "header",
            3,
            &lb("{consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}}"),
        ),
        service(
            "cookie",
            2,
            &lb("{consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}}}"),
        ),
        service(
            "source",
            1,
            &lb("{consistentHash: {useSourceIp: true, minimumRingSize: 100000}}"),
        ),
        service(
            "query",
            4,
            &lb("{consistentHash: {httpQueryParameterName: user, ringHash: {minimumRingSize: 2}}}"),
        ),
        service("leastconn", 1, &lb("{simple: LEAST_CONN}")),
        service("random", 1, &lb("{simple: RANDOM}")),
        service("leastrequest", 1, &lb("{simple: LEAST_REQUEST}")),
    ]);
    use consistent_hash::{Cookie, Key};
    let cases = [
        // ceil(1024 / 3 endpoints)
        ("header", Some((Key::Header("x-user".into()), 342))),
        (
            "cookie",
            Some((
                Key::Cookie(Cookie {
                    name: "session".into(),
                    path: "/".into(),
                    ttl: secs(60),
                }),
                0,
            )),
        ),
        // The deprecated field, clamped to 10,000 points per endpoint.
        ("source", Some((Key::SourceIp(true), 10_000))),
        // At least one point per endpoint.
        ("query", Some((Key::QueryParameter("user".into()), 1))),
        ("leastconn", None),
    ];
    for (name, want) in cases {
        let got = svcs[name]
            .consistent_hash
            .clone()
            .map(|c| (c.key.unwrap_or(Key::SourceIp(false)), c.points_per_endpoint));
        assert_eq!(got, want, "{name}");
    }
    for (name, want) in [
        ("header", LoadBalancer::LeastRequest),
        ("leastconn", LoadBalancer::LeastRequest),
        ("leastrequest", LoadBalancer::LeastRequest),
        ("random", LoadBalancer::Random),
    ] {
        assert_eq!(svcs[name].load_balancer(), want, "{name}");
    }
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn connection_pool_limits_and_timeouts() {
    let (svcs, notes) = services(&[
        service(
            "full",
            1,
            r#"  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, idleTimeout: 1h}
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 1
        maxRetries: 3
        idleTimeout: 90s"#,
        ),
        service(
            "defaults",
            1,
            "  trafficPolicy:\n    connectionPool: {http: {http1MaxPendingRequests: 0, idleTimeout: 5s}}",
        ),
    ]);
    let full = &svcs["full"];
    assert_eq!(
        full.connection_pool,
        Some(ConnectionPool {
            max_connections: 100,
            max_pending_requests: 10,
            max_requests: 1000,
            max_requests_per_connection: 1,
            max_retries: 3,
        })
    );
    assert_eq!(
        (
            full.connect_timeout,
            full.idle_timeout,
            full.tcp_idle_timeout
        ),
        (millis(30), secs(90), secs(3600))
    );
    // 0 is Istio's "default" (unlimited): no limits to send.
    let defaults = &svcs["defaults"];
    assert_eq!(defaults.connection_pool, None);
    assert_eq!(defaults.idle_timeout, secs(5));
    assert_eq!(defaults.connect_timeout, None);
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn outlier_detection_gets_istios_defaults() {
    let od = |spec: &str| format!("  trafficPolicy:\n    outlierDetection: {spec}");
    let (svcs, notes) = services(&[
        service("empty", 1, &od("{}")),
        service(
            "explicit",
            1,
            &od("{consecutive5xxErrors: 0, consecutiveGatewayErrors: 4, interval: 1m, baseEjectionTime: 2m, maxEjectionPercent: 50, minHealthPercent: 20}"),
        ),
        service("legacy", 1, &od("{consecutiveErrors: 7}")),
        service("zero-percent", 1, &od("{maxEjectionPercent: 0}")),
        service("none", 1, "  subsets: [{name: v1, labels: {version: v1}}]"),
    ]);
    let cases = [
        ("empty", Some(istio_outlier())),
        (
            "explicit",
            Some(OutlierDetection {
                consecutive_5xx: 0,
                consecutive_gateway_errors: 4,
                interval: secs(60),
                base_ejection_time: secs(120),
                max_ejection_percent: Some(50),
                min_health_percent: 20,
            }),
        ),
        // Istio: the deprecated field counts gateway errors and turns the 5xx default off.
        (
            "legacy",
            Some(OutlierDetection {
                consecutive_5xx: 0,
                consecutive_gateway_errors: 7,
                ..istio_outlier()
            }),
        ),
        // Istio cannot tell 0 from unset here: the default 10 % applies.
        ("zero-percent", Some(istio_outlier())),
        ("none", None),
    ];
    for (name, want) in cases {
        assert_eq!(svcs[name].outlier_detection, want, "{name}");
    }
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn unapplied_policy_parts_are_noted() {
    let (svcs, notes) = services(&[service(
        "ports",
        2,
        r#"  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnectionDuration: 1h}}
    portLevelSettings:
      - port: {number: 8080}
        loadBalancer: {simple: ROUND_ROBIN}
  subsets:
    - name: v1
      labels: {version: v1}
      trafficPolicy:
        tls: {mode: DISABLE}
        portLevelSettings:
          - port: {number: 8080}
            connectionPool: {tcp: {maxConnections: 1}}"#,
    )]);
    // The policy for all ports still applies.
    assert_eq!(svcs["ports"].load_balancer(), LoadBalancer::Random);
    assert_eq!(svcs["ports"].subsets[0].traffic_policy, None);
    assert_eq!(
        notes,
        [
            "DestinationRule shop/ports, subset `v1`: a tls mode other than the service's is not applied yet (the service's applies)",
            "DestinationRule shop/ports, subset `v1`: portLevelSettings not applied yet (the proxy has no per-port policy; the policy for all ports applies)",
            "DestinationRule shop/ports: connectionPool.tcp.maxConnectionDuration not applied yet",
            "DestinationRule shop/ports: portLevelSettings not applied yet (the proxy has no per-port policy; the policy for all ports applies)",
        ]
    );
}
