use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};

use super::cache::{thread_http_entries, THREAD_CACHE_MAX};
use super::*;
use crate::telemetry::peer::WorkloadMeta;

fn meta(workload: &str, namespace: &str, app: &str, version: &str) -> WorkloadMeta {
    let labels: HashMap<String, String> = [("app", app), ("version", version)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    WorkloadMeta::from_labels(workload, namespace, &labels)
}

struct Fixture {
    source: WorkloadMeta,
    destination: WorkloadMeta,
}

impl Fixture {
    fn new() -> Self {
        Self {
            source: meta("productpage-v1", "default", "productpage", "v1"),
            destination: meta("reviews-v2", "default", "reviews", "v2"),
        }
    }

    fn request(&self) -> RequestLabels<'_> {
        RequestLabels {
            reporter: Reporter::Destination,
            source: &self.source,
            source_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            destination: &self.destination,
            destination_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            destination_service: "reviews.default.svc.cluster.local",
            grpc: false,
            response_code: 200,
            grpc_status: None,
            response_flags: "-",
            mutual_tls: true,
        }
    }

    fn tcp(&self) -> TcpLabels<'_> {
        TcpLabels {
            reporter: Reporter::Source,
            source: &self.source,
            source_principal: "",
            destination: &self.destination,
            destination_principal: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            destination_service: "mysql.db.svc.cluster.local",
            response_flags: "",
            mutual_tls: true,
        }
    }
}

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Lines of `family` (samples only) as written.
fn samples<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

/// The value of the one sample of `metric` (a full name, e.g. `..._count`) with `label="value"`.
fn value(text: &str, metric: &str, needle: &str) -> f64 {
    let matching: Vec<&str> = samples(text, metric)
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect();
    assert_eq!(matching.len(), 1, "{metric} {needle}: {matching:#?}");
    matching[0].rsplit(' ').next().unwrap().parse().unwrap()
}

/// Label names of a sample line.
fn label_names(line: &str) -> BTreeSet<String> {
    let inner = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
    inner
        .split("\",")
        .map(|pair| pair.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn exposition_matches_istio() {
    let registry = Registry::new();
    let m = IstioMetrics::new(&registry, DEFAULT_MAX_LABEL_SETS).unwrap();
    let f = Fixture::new();
    m.record_request(&f.request(), Duration::from_micros(7_300), 120, 4_000);
    drop(m.tcp_open(&f.tcp()));
    let text = render(&registry);

    for (family, kind) in [
        ("istio_requests_total", "counter"),
        ("istio_request_duration_milliseconds", "histogram"),
        ("istio_request_bytes", "histogram"),
        ("istio_response_bytes", "histogram"),
        ("istio_tcp_sent_bytes_total", "counter"),
        ("istio_tcp_received_bytes_total", "counter"),
        ("istio_tcp_connections_opened_total", "counter"),
        ("istio_tcp_connections_closed_total", "counter"),
        ("halyard_metrics_label_sets_dropped_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("\n# TYPE {family} {kind}\n")),
            "{family}\n{text}"
        );
        assert!(text.contains(&format!("# HELP {family} ")), "{family}");
    }

    let http: BTreeSet<String> = HTTP_LABELS.iter().map(|s| s.to_string()).collect();
    let tcp: BTreeSet<String> = TCP_LABELS.iter().map(|s| s.to_string()).collect();
    let requests = samples(&text, "istio_requests_total");
    assert_eq!(requests.len(), 1);
    assert_eq!(label_names(requests[0]), http);
    assert_eq!(
        requests[0],
        "istio_requests_total{\
         connection_security_policy=\"mutual_tls\",\
         destination_app=\"reviews\",\
         destination_canonical_revision=\"v2\",\
         destination_canonical_service=\"reviews\",\
         destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-reviews\",\
         destination_service=\"reviews.default.svc.cluster.local\",\
         destination_service_name=\"reviews\",\
         destination_service_namespace=\"default\",\
         destination_version=\"v2\",\
         destination_workload=\"reviews-v2\",\
         destination_workload_namespace=\"default\",\
         grpc_response_status=\"\",\
         reporter=\"destination\",\
         request_protocol=\"http\",\
         response_code=\"200\",\
         response_flags=\"-\",\
         source_app=\"productpage\",\
         source_canonical_revision=\"v1\",\
         source_canonical_service=\"productpage\",\
         source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\",\
         source_version=\"v1\",\
         source_workload=\"productpage-v1\",\
         source_workload_namespace=\"default\"} 1"
    );
    for family in [
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    ] {
        let lines = samples(&text, family);
        assert_eq!(lines.len(), 1, "{family}");
        assert_eq!(label_names(lines[0]), tcp, "{family}");
        for label in [
            "request_protocol=\"tcp\"",
            "response_flags=\"-\"",
            // The client side does not know the policy, as in Istio.
            "connection_security_policy=\"unknown\"",
            "reporter=\"source\"",
            "source_principal=\"unknown\"",
            "destination_service_name=\"mysql\"",
        ] {
            assert!(
                lines[0].contains(label),
                "{family}: {label} in {}",
                lines[0]
            );
        }
    }

    let bounds = [
        "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
        "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
    ];
    for family in [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ] {
        let buckets = samples(&text, &format!("{family}_bucket"));
        let les: Vec<&str> = buckets
            .iter()
            .map(|l| {
                let start = l.find("le=\"").unwrap() + 4;
                let end = start + l[start..].find('"').unwrap();
                &l[start..end]
            })
            .collect();
        assert_eq!(les, bounds, "{family}");
        let mut names = label_names(buckets[0]);
        assert!(names.remove("le"));
        assert_eq!(names, http, "{family}");
        assert_eq!(value(&text, &format!("{family}_count"), "reporter"), 1.0);
    }
    // 7.3 ms lands in le=10, not le=5.
    let d = "istio_request_duration_milliseconds_bucket";
    assert_eq!(value(&text, d, "le=\"5\""), 0.0);
    assert_eq!(value(&text, d, "le=\"10\""), 1.0);
    assert!(
        (value(&text, "istio_request_duration_milliseconds_sum", "reporter") - 7.3).abs() < 1e-9
    );
    assert_eq!(value(&text, "istio_request_bytes_sum", "reporter"), 120.0);
    assert_eq!(value(&text, "istio_response_bytes_sum", "reporter"), 4000.0);
    assert_eq!(
        value(&text, "istio_response_bytes_bucket", "le=\"5000\""),
        1.0
    );
    assert_eq!(
        value(&text, "istio_response_bytes_bucket", "le=\"2500\""),
        0.0
    );
}

#[test]
fn label_values_follow_istio() {
    let registry = Registry::new();
    let m = IstioMetrics::new(&registry, DEFAULT_MAX_LABEL_SETS).unwrap();
    let f = Fixture::new();
    let base = f.request();
    let cases: [(RequestLabels<'_>, &[&str]); 6] = [
        (
            RequestLabels {
                grpc: true,
                grpc_status: Some(14),
                response_code: 200,
                ..base
            },
            &["request_protocol=\"grpc\"", "grpc_response_status=\"14\""],
        ),
        (
            RequestLabels {
                grpc: true,
                grpc_status: None,
                response_code: 201,
                ..base
            },
            &[
                "request_protocol=\"grpc\"",
                "grpc_response_status=\"\"",
                "response_code=\"201\"",
            ],
        ),
        (
            // A status on a non-gRPC request is ignored.
            RequestLabels {
                grpc_status: Some(2),
                response_code: 202,
                ..base
            },
            &[
                "request_protocol=\"http\"",
                "grpc_response_status=\"\"",
                "response_code=\"202\"",
            ],
        ),
        (
            RequestLabels {
                response_code: 0,
                response_flags: "UF,URX",
                ..base
            },
            &["response_code=\"0\"", "response_flags=\"UF,URX\""],
        ),
        (
            RequestLabels {
                response_code: 999,
                mutual_tls: false,
                ..base
            },
            &["response_code=\"0\"", "connection_security_policy=\"none\""],
        ),
        (
            RequestLabels {
                reporter: Reporter::Source,
                response_code: 503,
                source_principal: "",
                destination_service: "",
                response_flags: "",
                ..base
            },
            &[
                "reporter=\"source\"",
                "connection_security_policy=\"unknown\"",
                "source_principal=\"unknown\"",
                "destination_service=\"unknown\"",
                "response_flags=\"-\"",
                "response_code=\"503\"",
            ],
        ),
    ];
    for (labels, _) in &cases {
        m.record_request(labels, Duration::from_millis(1), 0, 0);
    }
    let text = render(&registry);
    let lines = samples(&text, "istio_requests_total");
    // 999 and 0 share a label set only if everything else matches; here they differ.
    assert_eq!(lines.len(), cases.len(), "{lines:#?}");
    for (_, expected) in &cases {
        let hits = lines
            .iter()
            .filter(|l| expected.iter().all(|e| l.contains(e)))
            .count();
        assert_eq!(hits, 1, "{expected:?} in {lines:#?}");
    }
}

#[test]
fn counts_add_up_across_threads() {
    let registry = Registry::new();
    let m = Arc::new(IstioMetrics::new(&registry, DEFAULT_MAX_LABEL_SETS).unwrap());
    let f = Arc::new(Fixture::new());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (m, f) = (Arc::clone(&m), Arc::clone(&f));
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    m.record_request(&f.request(), Duration::from_millis(3), 10, 20);
                }
                let conn = m.tcp_open(&f.tcp());
                conn.sent(5);
                conn.received(7);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let text = render(&registry);
    assert_eq!(value(&text, "istio_requests_total", "reporter"), 40_000.0);
    for family in [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ] {
        assert_eq!(
            value(&text, &format!("{family}_count"), "reporter"),
            40_000.0
        );
    }
    assert_eq!(
        value(&text, "istio_request_bytes_sum", "reporter"),
        400_000.0
    );
    assert_eq!(
        value(&text, "istio_response_bytes_sum", "reporter"),
        800_000.0
    );
    assert_eq!(
        value(&text, "istio_request_duration_milliseconds_sum", "reporter"),
        120_000.0
    );
    assert_eq!(
        value(&text, "istio_tcp_connections_opened_total", "reporter"),
        4.0
    );
    assert_eq!(
        value(&text, "istio_tcp_connections_closed_total", "reporter"),
        4.0
    );
    assert_eq!(value(&text, "istio_tcp_sent_bytes_total", "reporter"), 20.0);
    assert_eq!(
        value(&text, "istio_tcp_received_bytes_total", "reporter"),
        28.0
    );
    assert_eq!(m.http_sets.len(), 1);
    assert_eq!(m.tcp_sets.len(), 1);
}

#[test]
fn cap_drops_and_counts() {
    let registry = Registry::new();
    let m = IstioMetrics::new(&registry, 2).unwrap();
    let f = Fixture::new();
    let with_code = |code| RequestLabels {
        response_code: code,
        ..f.request()
    };
    m.record_request(&with_code(200), Duration::ZERO, 1, 1);
    m.record_request(&with_code(404), Duration::ZERO, 1, 1);
    m.record_request(&with_code(500), Duration::ZERO, 1, 1); // third set: dropped
    m.record_request(&with_code(500), Duration::ZERO, 1, 1); // dropped again (cached)
    m.record_request(&with_code(200), Duration::ZERO, 1, 1); // existing sets still count
    std::thread::scope(|s| {
        s.spawn(|| m.record_request(&with_code(503), Duration::ZERO, 1, 1)); // another thread
    });
    let text = render(&registry);
    let lines = samples(&text, "istio_requests_total");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(
        value(&text, "istio_requests_total", "response_code=\"200\""),
        2.0
    );
    assert_eq!(
        value(&text, "istio_requests_total", "response_code=\"404\""),
        1.0
    );
    assert!(!text.contains("response_code=\"500\""));
    assert_eq!(
        samples(&text, "istio_request_duration_milliseconds_count").len(),
        2
    );
    let dropped = "halyard_metrics_label_sets_dropped_total";
    assert_eq!(value(&text, dropped, "kind=\"http\""), 3.0);
    assert_eq!(value(&text, dropped, "kind=\"tcp\""), 0.0);

    // TCP has its own bound.
    let a = m.tcp_open(&f.tcp());
    let b = m.tcp_open(&TcpLabels {
        mutual_tls: false,
        reporter: Reporter::Destination,
        ..f.tcp()
    });
    let c = m.tcp_open(&TcpLabels {
        response_flags: "UF",
        ..f.tcp()
    });
    assert!(a.is_recorded() && b.is_recorded());
    assert!(!c.is_recorded());
    c.sent(100);
    drop(c);
    let text = render(&registry);
    assert_eq!(value(&text, dropped, "kind=\"tcp\""), 1.0);
    assert_eq!(
        samples(&text, "istio_tcp_connections_opened_total").len(),
        2
    );
    assert!(!text.contains("response_flags=\"UF\""));

    // No label set at all.
    let registry = Registry::new();
    let m = IstioMetrics::new(&registry, 0).unwrap();
    m.record_request(&f.request(), Duration::ZERO, 1, 1);
    let text = render(&registry);
    assert!(samples(&text, "istio_requests_total").is_empty());
    assert_eq!(value(&text, dropped, "kind=\"http\""), 1.0);
}

#[test]
fn tcp_conn_counts_open_close_and_bytes() {
    let registry = Registry::new();
    let m = IstioMetrics::new(&registry, DEFAULT_MAX_LABEL_SETS).unwrap();
    let f = Fixture::new();
    let conn = m.tcp_open(&f.tcp());
    conn.received(100);
    conn.sent(1_000);
    conn.sent(24);
    let text = render(&registry);
    assert_eq!(
        value(&text, "istio_tcp_connections_opened_total", "reporter"),
        1.0
    );
    assert_eq!(
        value(&text, "istio_tcp_connections_closed_total", "reporter"),
        0.0
    );
    assert_eq!(
        value(&text, "istio_tcp_sent_bytes_total", "reporter"),
        1_024.0
    );
    assert_eq!(
        value(&text, "istio_tcp_received_bytes_total", "reporter"),
        100.0
    );
    let second = m.tcp_open(&f.tcp());
    drop(conn);
    let text = render(&registry);
    assert_eq!(
        value(&text, "istio_tcp_connections_opened_total", "reporter"),
        2.0
    );
    assert_eq!(
        value(&text, "istio_tcp_connections_closed_total", "reporter"),
        1.0
    );
    drop(second);
    let text = render(&registry);
    assert_eq!(
        value(&text, "istio_tcp_connections_closed_total", "reporter"),
        2.0
    );
    // TCP metrics have no HTTP samples.
    assert!(samples(&text, "istio_requests_total").is_empty());
}

#[test]
fn instances_do_not_share_cached_handles() {
    let (r1, r2) = (Registry::new(), Registry::new());
    let m1 = IstioMetrics::new(&r1, DEFAULT_MAX_LABEL_SETS).unwrap();
    let m2 = IstioMetrics::new(&r2, DEFAULT_MAX_LABEL_SETS).unwrap();
    let f = Fixture::new();
    m1.record_request(&f.request(), Duration::ZERO, 0, 0);
    m2.record_request(&f.request(), Duration::ZERO, 0, 0);
    m2.record_request(&f.request(), Duration::ZERO, 0, 0);
    assert_eq!(value(&render(&r1), "istio_requests_total", "reporter"), 1.0);
    assert_eq!(value(&render(&r2), "istio_requests_total", "reporter"), 2.0);
    // Registering twice in one registry is an error, not a panic.
    assert!(IstioMetrics::new(&r1, 1).is_err());
}

#[test]
fn texts_that_run_together_stay_apart() {
    // The same characters split differently between the principals and the service are
    // different label sets, for HTTP and for TCP; so are texts of the same lengths that
    // differ in one character (recorded right after each other, as a thread's last label set
    // is checked first).
    let registry = Registry::new();
    let m = IstioMetrics::new(&registry, DEFAULT_MAX_LABEL_SETS).unwrap();
    let f = Fixture::new();
    let splits = [
        ("spiffe://a", "bc", "d.svc"),
        ("spiffe://ab", "c", "d.svc"),
        ("spiffe://a", "b", "cd.svc"),
        ("spiffe://a", "b", "ce.svc"),
    ];
    for (i, (src, dst, service)) in splits.iter().enumerate() {
        for _ in 0..=i {
            let l = RequestLabels {
                source_principal: src,
                destination_principal: dst,
                destination_service: service,
                ..f.request()
            };
            m.record_request(&l, Duration::ZERO, 0, 0);
        }
        drop(m.tcp_open(&TcpLabels {
            source_principal: src,
            destination_principal: dst,
            destination_service: service,
            ..f.tcp()
        }));
    }
    let text = render(&registry);
    for (i, (src, dst, service)) in splits.iter().enumerate() {
        let needle = format!(
            "source_principal=\"{src}\",source_version=\"v1\",source_workload=\"productpage-v1\""
        );
        let hits: Vec<&str> = samples(&text, "istio_requests_total")
            .into_iter()
            .filter(|l| {
                l.contains(&needle)
                    && l.contains(&format!("destination_principal=\"{dst}\""))
                    && l.contains(&format!("destination_service=\"{service}\""))
            })
            .collect();
        assert_eq!(hits.len(), 1, "{src} {dst} {service}: {text}");
        assert!(hits[0].ends_with(&format!(" {}", i + 1)), "{hits:?}");
    }
    assert_eq!(samples(&text, "istio_requests_total").len(), 4, "{text}");
    assert_eq!(
        samples(&text, "istio_tcp_connections_closed_total").len(),
        4,
        "{text}"
    );
}

#[test]
fn thread_cache_is_bounded() {
    std::thread::spawn(|| {
        let registry = Registry::new();
        let m = IstioMetrics::new(&registry, 2 * THREAD_CACHE_MAX).unwrap();
        let f = Fixture::new();
        let first = f.request();
        for i in 0..(THREAD_CACHE_MAX + 10) {
            let flags = format!("F{i}");
            m.record_request(
                &RequestLabels {
                    response_flags: &flags,
                    ..f.request()
                },
                Duration::ZERO,
                0,
                0,
            );
            assert!(thread_http_entries() <= THREAD_CACHE_MAX);
        }
        m.record_request(&first, Duration::ZERO, 0, 0);
        m.record_request(&first, Duration::ZERO, 0, 0);
        let text = render(&registry);
        assert_eq!(
            value(&text, "istio_requests_total", "response_flags=\"-\""),
            2.0
        );
        assert_eq!(
            value(&text, "istio_requests_total", "response_flags=\"F0\""),
            1.0
        );
        assert_eq!(m.http_sets.len(), THREAD_CACHE_MAX + 11);
    })
    .join()
    .unwrap();
}

#[test]
fn splits_service_hosts() {
    for (host, expected) in [
        ("reviews.default.svc.cluster.local", ("reviews", "default")),
        (
            "reviews.default.svc.cluster.local:9080",
            ("reviews", "default"),
        ),
        ("reviews.default.svc", ("reviews", "default")),
        ("reviews.default.svc.corp.example", ("reviews", "default")),
        ("reviews", ("reviews", "fallback")),
        ("reviews:9080", ("reviews", "fallback")),
        ("reviews.default", ("reviews.default", "fallback")),
        ("api.example.com", ("api.example.com", "fallback")),
        (
            "a.b.svcx.cluster.local",
            ("a.b.svcx.cluster.local", "fallback"),
        ),
        (
            ".default.svc.cluster.local",
            (".default.svc.cluster.local", "fallback"),
        ),
        ("10.0.0.1:80", ("10.0.0.1", "fallback")),
        ("[::1]:80", ("[::1]", "fallback")),
        ("::1", ("::1", "fallback")),
        ("", ("", "fallback")),
    ] {
        assert_eq!(service_name_namespace(host, "fallback"), expected, "{host}");
    }
}
