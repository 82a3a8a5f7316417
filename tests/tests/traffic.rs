//! Istio-style traffic management through a client sidecar (and, where it matters, backend
//! sidecars): weighted subsets, header/regex/absence matches, retries, outlier detection,
//! timeouts, circuit breakers, consistent hashing, mirrors, faults, redirects, rewrites and
//! header operations. curl is the client; big counts use URL globbing so that one curl process
//! sends many requests over one keep-alive connection.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use halyard_tests::*;

fn host(h: &str) -> String {
    format!("Host: {h}")
}

/// An echo app with its own sidecar in front (plaintext, PERMISSIVE inbound).
struct Backend {
    echo: Echo,
    proxy: Proxy,
}

impl Backend {
    fn start(name: &str, version: &str, echo_flags: &[&str]) -> Backend {
        let echo = Echo::start_with(name, "127.0.0.1:0", echo_flags);
        let cfg = format!(
            "version: {name}-1
workload:
  name: {name}
  namespace: default
  labels: {{app: {name}, version: {version}}}
  ports:
    - port: 8080
      protocol: HTTP
      appAddress: 127.0.0.1:{}
",
            echo.port()
        );
        let proxy = Proxy::start(&cfg);
        Backend { echo, proxy }
    }

    /// The client-side endpoint entry that reaches this backend through its sidecar.
    fn endpoint(&self, version: &str) -> String {
        format!(
            "{{address: 127.0.0.1, port: {}, labels: {{version: {version}}}}}",
            self.proxy.inbound.port()
        )
    }
}

/// A plain endpoint entry for an echo app without a sidecar.
fn direct(echo: &Echo) -> String {
    format!("{{address: 127.0.0.1, port: {}}}", echo.port())
}

/// Sends `n` requests `http://addr{path}/{i}` with `Host: host_name`, split over `procs` curl
/// processes running at once (each one keep-alive connection), and returns one `-w fmt` line per
/// request.
fn blast(
    addr: std::net::SocketAddr,
    host_name: &str,
    path: &str,
    n: usize,
    procs: usize,
    fmt: &str,
) -> Vec<String> {
    let per = n / procs;
    let handles: Vec<_> = (0..procs)
        .map(|p| {
            let args = vec![
                "-o".to_string(),
                "/dev/null".to_string(),
                "-H".to_string(),
                host(host_name),
                "-w".to_string(),
                format!("{fmt}\n"),
                format!(
                    "http://{addr}{path}/[{}-{}]",
                    p * per + 1,
                    if p + 1 == procs { n } else { (p + 1) * per }
                ),
            ];
            std::thread::spawn(move || curl_lines(&args))
        })
        .collect();
    let lines: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("curl thread"))
        .collect();
    assert_eq!(
        lines.len(),
        n,
        "curl printed {} result lines for {n} requests",
        lines.len()
    );
    lines
}

/// `x-echo-served` of an echo app, asked directly (this request counts too).
fn served(echo: &Echo) -> u64 {
    let r = http(echo.addr, "GET", "/count", &[], b"").expect("direct request to echo");
    r.header("x-echo-served")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-echo-served from {}: {:?}", echo.addr, r.headers))
}

/// curl once; returns its output and how long it took (process start included).
fn curl_timed(args: &[&str]) -> (CurlOut, Duration) {
    let start = Instant::now();
    let out = curl(args);
    (out, start.elapsed())
}

const BACKEND: &str = "backend.default.svc.cluster.local";

/// The client sidecar's service `backend` over the given endpoints, with subsets v1 and v2.
fn backend_service(endpoints: &[String], extra: &str) -> String {
    format!(
        "  - name: {BACKEND}
    hosts: [backend]
    ports: [{{port: 80, protocol: HTTP}}]
    connectTimeout: 1s
    endpoints: [{}]
    subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
{extra}",
        endpoints.join(", ")
    )
}

#[test]
fn weighted_split_90_10_over_subsets() {
    let v1 = Backend::start("split-v1", "v1", &[]);
    let v2 = Backend::start("split-v2", "v2", &[]);
    let cfg = format!(
        "version: client-1
services:
{}
virtualHosts:
  - name: backend
    hosts: [backend]
    routes:
      - name: split
        destinations:
          - {{service: {BACKEND}, subset: v1, weight: 90}}
          - {{service: {BACKEND}, subset: v2, weight: 10}}
",
        backend_service(&[v1.endpoint("v1"), v2.endpoint("v2")], "")
    );
    let client = Proxy::start(&cfg);

    let n = 10_000;
    let lines = blast(
        client.outbound,
        "backend",
        "/split",
        n,
        4,
        "%{http_code} %header{x-echo-workload}",
    );
    let t = tally(&lines);
    let c1 = t.get("200 split-v1").copied().unwrap_or(0);
    let c2 = t.get("200 split-v2").copied().unwrap_or(0);
    assert_eq!(c1 + c2, n, "responses by status and workload: {t:?}");
    let share = c2 as f64 * 100.0 / n as f64;
    eprintln!("weighted split: v1 {c1}, v2 {c2} of {n} (v2 share {share:.2} %)");
    assert!(
        (8.0..=12.0).contains(&share),
        "v2 got {share:.2} % of {n} requests (v1 {c1}, v2 {c2}), want 8-12 %"
    );
    // The backend sidecars saw the traffic on their inbound listeners.
    let e = v2
        .proxy
        .wait_log("inbound request on v2", |e| e["listener"] == "inbound");
    assert_eq!(e["response_code"], 200, "v2 inbound log line: {e}");
}

#[test]
fn header_regex_and_absence_matches_pick_subsets() {
    let v1 = Backend::start("canary-v1", "v1", &[]);
    let v2 = Backend::start("canary-v2", "v2", &[]);
    let cfg = format!(
        "version: client-1
services:
{}
virtualHosts:
  - name: backend
    hosts: [backend]
    routes:
      - name: canary
        match: [{{headers: {{x-canary: {{exact: \"yes\"}}}}}}]
        route: {{service: {BACKEND}, subset: v2}}
      - name: items
        match: [{{uri: {{regex: \"/items/[0-9]+\"}}}}]
        route: {{service: {BACKEND}, subset: v2}}
      - name: anonymous
        match: [{{uri: {{prefix: /anon}}, withoutHeaders: {{authorization: {{}}}}}}]
        route: {{service: {BACKEND}, subset: v2}}
      - name: default
        route: {{service: {BACKEND}, subset: v1}}
",
        backend_service(&[v1.endpoint("v1"), v2.endpoint("v2")], "")
    );
    let client = Proxy::start(&cfg);
    let who = |path: &str, headers: &[&str]| -> String {
        let mut args: Vec<&str> = vec!["-H", "Host: backend"];
        for h in headers {
            args.push("-H");
            args.push(h);
        }
        let u = url(client.outbound, path);
        args.push(&u);
        let out = curl(&args);
        assert_eq!(out.status, 200, "GET {path} {headers:?}: {out:?}");
        out.json()["workload"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let cases: &[(&str, &[&str], &str)] = &[
        ("/", &["x-canary: yes"], "canary-v2"),
        ("/", &["x-canary: no"], "canary-v1"),
        ("/", &["x-canary: YES"], "canary-v1"),
        ("/", &["x-canary: yes-please"], "canary-v1"),
        ("/", &[], "canary-v1"),
        ("/items/42", &[], "canary-v2"),
        ("/items/42?view=full", &[], "canary-v2"),
        ("/items/42x", &[], "canary-v1"),
        ("/items/", &[], "canary-v1"),
        ("/v0/items/42", &[], "canary-v1"),
        ("/anon/page", &[], "canary-v2"),
        ("/anon/page", &["Authorization: Bearer abc"], "canary-v1"),
        ("/anon/page", &["x-canary: yes"], "canary-v2"),
    ];
    for (path, headers, want) in cases {
        let got = who(path, headers);
        assert_eq!(
            &got, want,
            "GET {path} with {headers:?} was served by {got}, want {want}"
        );
    }
    let e = client.wait_log("route name of /items/42", |e| e["path"] == "/items/42");
    assert_eq!(e["route_name"], "items", "access log line: {e}");
}

#[test]
fn retries_hide_a_flaky_instance() {
    let good = Echo::start("retry-good");
    let flaky = Echo::start_with("retry-flaky", "127.0.0.1:0", &["--fail-percent", "50"]);
    let cfg = format!(
        "version: client-1
services:
  - name: flaky.default.svc.cluster.local
    hosts: [flaky]
    ports: [{{port: 80, protocol: HTTP}}]
    connectTimeout: 1s
    endpoints: [{}, {}]
virtualHosts:
  - name: flaky
    hosts: [flaky]
    routes:
      - name: retried
        route: {{service: flaky.default.svc.cluster.local}}
        retries: {{attempts: 3, retryOn: [5xx]}}
",
        direct(&good),
        direct(&flaky)
    );
    let client = Proxy::start(&cfg);
    let n = 2_000;
    let lines = blast(client.outbound, "flaky", "/r", n, 1, "%{http_code}");
    let ok = lines.iter().filter(|l| *l == "200").count();
    let rate = ok as f64 * 100.0 / n as f64;
    let t = tally(&lines);
    let log = wait_for("all access log lines", || {
        let log = client.access_log();
        (log.len() >= n).then_some(log)
    });
    let mut attempts: HashMap<u64, usize> = HashMap::new();
    for e in &log {
        let a = e["upstream_request_attempt_count"].as_u64().unwrap_or(0);
        *attempts.entry(a).or_insert(0) += 1;
    }
    let retried = log
        .iter()
        .filter(|e| e["upstream_request_attempt_count"].as_u64().unwrap_or(0) >= 2)
        .count();
    let retries = client
        .metric("halyard_upstream_rq_retry_total{cluster=\"flaky.default.svc.cluster.local\"}")
        .unwrap_or(0.0);
    let flaky_served = served(&flaky) - 1;
    eprintln!(
        "retries: {ok}/{n} ok ({rate:.2} %), statuses {t:?}, attempts per request {attempts:?}, \
         retry metric {retries}, flaky instance served {flaky_served}"
    );
    assert!(
        rate >= 99.9,
        "success rate {rate:.2} % ({ok} of {n}), statuses {t:?}"
    );
    assert!(
        retried > 0,
        "no access log line with upstream_request_attempt_count >= 2 (counts {attempts:?})"
    );
    assert!(retries > 0.0, "halyard_upstream_rq_retry_total = {retries}");
    assert!(
        attempts.keys().all(|a| (1..=4).contains(a)),
        "attempt counts outside 1..=4: {attempts:?}"
    );
}

#[test]
fn outlier_detection_ejects_a_flaky_instance() {
    let good = Echo::start("outlier-good");
    let flaky = Echo::start_with("outlier-flaky", "127.0.0.1:0", &["--fail-percent", "50"]);
    let cluster = "flaky.default.svc.cluster.local";
    let cfg = format!(
        "version: client-1
services:
  - name: {cluster}
    hosts: [flaky]
    ports: [{{port: 80, protocol: HTTP}}]
    connectTimeout: 1s
    endpoints: [{}, {}]
    outlierDetection: {{consecutive5xx: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}}
virtualHosts:
  - name: flaky
    hosts: [flaky]
    routes:
      - name: no-retries
        route: {{service: {cluster}}}
        retries: {{attempts: 0}}
",
        direct(&good),
        direct(&flaky)
    );
    let client = Proxy::start(&cfg);
    let n = 400;
    let lines = blast(
        client.outbound,
        "flaky",
        "/o",
        n,
        1,
        "%{http_code} %header{x-echo-workload}",
    );
    let last_flaky = lines.iter().rposition(|l| l.ends_with("outlier-flaky"));
    let failures = lines.iter().filter(|l| !l.starts_with("200")).count();
    let before = served(&flaky);
    let ejections = client
        .metric(&format!(
            "halyard_outlier_ejections_total{{cluster=\"{cluster}\"}}"
        ))
        .unwrap_or(0.0);
    eprintln!(
        "outlier: {failures} failures in {n} requests, last request to the flaky instance was #{:?}, \
         flaky served {} in all, ejections {ejections}",
        last_flaky.map(|i| i + 1),
        before - 1
    );
    let last = last_flaky.expect("the flaky instance got no request at all");
    assert!(
        last < 300,
        "the flaky instance still got request #{} of {n}: {:?}",
        last + 1,
        tally(&lines)
    );
    assert!(
        ejections >= 1.0,
        "halyard_outlier_ejections_total = {ejections}"
    );
    // Once ejected it gets nothing more: its own counter stands still.
    let more = blast(
        client.outbound,
        "flaky",
        "/o2",
        200,
        1,
        "%{http_code} %header{x-echo-workload}",
    );
    let after = served(&flaky);
    assert_eq!(
        after,
        before + 1,
        "the ejected instance's x-echo-served went from {before} to {after} (only our direct \
         request should count) while 200 more requests went through: {:?}",
        tally(&more)
    );
    assert!(
        more.iter().all(|l| l == "200 outlier-good"),
        "after ejection: {:?}",
        tally(&more)
    );
}

#[test]
fn timeouts_cut_off_a_hung_instance() {
    let hung = Echo::start_with("hung", "127.0.0.1:0", &["--hang"]);
    let hung2 = Echo::start_with("hung-2", "127.0.0.1:0", &["--hang"]);
    let good = Echo::start("not-hung");
    let cfg = format!(
        "version: client-1
services:
  - name: hung.default.svc.cluster.local
    hosts: [hung]
    ports: [{{port: 80, protocol: HTTP}}]
    endpoints: [{}]
  - name: mixed.default.svc.cluster.local
    hosts: [mixed]
    ports: [{{port: 80, protocol: HTTP}}]
    loadBalancer: ROUND_ROBIN
    endpoints: [{}, {}]
virtualHosts:
  - name: hung
    hosts: [hung]
    routes:
      - name: cut
        route: {{service: hung.default.svc.cluster.local}}
        timeout: 300ms
        retries: {{attempts: 0}}
  - name: mixed
    hosts: [mixed]
    routes:
      - name: per-try
        route: {{service: mixed.default.svc.cluster.local}}
        retries: {{attempts: 2, perTryTimeout: 200ms, retryOn: [5xx]}}
",
        direct(&hung),
        direct(&hung2),
        direct(&good)
    );
    let client = Proxy::start(&cfg);

    let (out, took) = curl_timed(&["-H", "Host: hung", &url(client.outbound, "/hang")]);
    eprintln!("route timeout 300ms: {} after {took:?}", out.status);
    assert_eq!(
        out.status, 504,
        "hung instance behind a 300ms timeout: {out:?}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "the 504 came after {took:?}, want 0.3-2 s"
    );
    let e = client.wait_log("the timed out request", |e| e["path"] == "/hang");
    assert_eq!(e["response_flags"], "UT", "access log line: {e}");
    assert_eq!(e["response_code"], 504, "access log line: {e}");

    // One hung, one healthy endpoint: a try that hangs is cut after 200 ms and retried.
    let mut times = Vec::new();
    for i in 0..10 {
        let path = format!("/mixed/{i}");
        let (out, took) = curl_timed(&["-H", "Host: mixed", &url(client.outbound, &path)]);
        assert_eq!(out.status, 200, "GET {path} (one hung endpoint): {out:?}");
        assert_eq!(
            out.json()["workload"],
            "not-hung",
            "GET {path}: {}",
            out.body
        );
        times.push(took);
    }
    let log = wait_for("10 access log lines for /mixed", || {
        let l: Vec<Value> = client
            .access_log()
            .into_iter()
            .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/mixed/")))
            .collect();
        (l.len() == 10).then_some(l)
    });
    let retried: Vec<&Value> = log
        .iter()
        .filter(|e| e["upstream_request_attempt_count"].as_u64().unwrap_or(0) >= 2)
        .collect();
    eprintln!(
        "per-try timeout 200ms: 10/10 ok, {} needed a retry, times {times:?}",
        retried.len()
    );
    for e in &retried {
        let ms = e["duration"].as_u64().unwrap_or(0);
        assert!(
            (190..2000).contains(&ms),
            "a retried request took {ms} ms (want about 200 ms per hung try): {e}"
        );
    }
    // Round robin starts at the hung endpoint, so the first request at least needs a retry;
    // a retry avoids the endpoint already tried, so one 200 ms try is the most that is lost.
    assert!(
        !retried.is_empty(),
        "no request needed a retry although round robin starts at the hung endpoint: {log:?}"
    );
    assert!(
        times.iter().all(|t| *t < Duration::from_millis(1500)),
        "request times {times:?}"
    );
}

#[test]
fn circuit_breaker_fails_fast_with_uo() {
    let slow = Echo::start("breaker");
    let cluster = "slow.default.svc.cluster.local";
    let cfg = format!(
        "version: client-1
services:
  - name: {cluster}
    hosts: [slow]
    ports: [{{port: 80, protocol: HTTP}}]
    endpoints: [{}]
    connectionPool: {{maxConnections: 1, maxPendingRequests: 1}}
",
        direct(&slow)
    );
    let client = Proxy::start(&cfg);
    let n = 10;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let outbound = client.outbound;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let u = url(outbound, &format!("/cb/{i}?delay_ms=500"));
                barrier.wait();
                let lines = curl_lines(&[
                    "-o".into(),
                    "/dev/null".into(),
                    "-H".into(),
                    "Host: slow".into(),
                    "-w".into(),
                    "%{http_code} %{time_total}".into(),
                    u,
                ]);
                let line = lines.first().cloned().unwrap_or_default();
                let (code, secs) = line.split_once(' ').unwrap_or(("0", "0"));
                (
                    code.parse::<u16>().unwrap_or(0),
                    secs.parse::<f64>().unwrap_or(f64::NAN),
                )
            })
        })
        .collect();
    let results: Vec<(u16, f64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let rejected: Vec<f64> = results.iter().filter(|r| r.0 == 503).map(|r| r.1).collect();
    let ok: Vec<f64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    eprintln!(
        "circuit breaker: {} × 503 in {rejected:?} s, {} × 200 in {ok:?} s",
        rejected.len(),
        ok.len()
    );
    assert_eq!(
        rejected.len() + ok.len(),
        n,
        "every request is either 200 or 503: {results:?}"
    );
    assert!(
        rejected.len() >= 5,
        "only {} of {n} concurrent requests were refused: {results:?}",
        rejected.len()
    );
    assert!(
        ok.len() >= 2,
        "the active and the pending request should succeed; {results:?}"
    );
    assert!(
        rejected.iter().all(|s| *s < 0.25),
        "503s took {rejected:?} s; refusal must be quick (< 250 ms, the upstream takes 500 ms)"
    );
    assert!(
        ok.iter().all(|s| *s >= 0.45),
        "200s took {ok:?} s; they wait for the 500 ms upstream"
    );
    let uo = wait_for("access log lines for all requests", || {
        let l: Vec<Value> = client
            .access_log()
            .into_iter()
            .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/cb/")))
            .collect();
        (l.len() == n).then_some(l)
    });
    let flagged = uo
        .iter()
        .filter(|e| e["response_code"] == 503 && e["response_flags"] == "UO")
        .count();
    assert_eq!(
        flagged,
        rejected.len(),
        "503 lines flagged UO in the access log: {uo:?}"
    );
    let overflow = client
        .metric(&format!(
            "halyard_upstream_rq_pending_overflow_total{{cluster=\"{cluster}\"}}"
        ))
        .unwrap_or(0.0);
    assert!(
        overflow >= rejected.len() as f64,
        "halyard_upstream_rq_pending_overflow_total = {overflow}, {} refused",
        rejected.len()
    );
}

/// Asks `sticky` for each user key once; returns key → workload.
fn endpoint_per_key(proxy: &Proxy, keys: &[String]) -> HashMap<String, String> {
    workload_per_key(proxy.outbound, "sticky", "x-user", keys)
}

#[test]
fn consistent_hash_keeps_keys_when_an_endpoint_leaves() {
    let echos: Vec<Echo> = (0..10).map(|i| Echo::start(&format!("ring-{i}"))).collect();
    let config = |version: &str, eps: &[&Echo]| {
        format!(
            "version: {version}
services:
  - name: sticky.default.svc.cluster.local
    hosts: [sticky]
    ports: [{{port: 80, protocol: HTTP}}]
    endpoints: [{}]
    consistentHash: {{header: x-user}}
",
            eps.iter().map(|e| direct(e)).collect::<Vec<_>>().join(", ")
        )
    };
    let all: Vec<&Echo> = echos.iter().collect();
    let proxy = Proxy::start(&config("ring-1", &all));
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let before = endpoint_per_key(&proxy, &keys);
    let spread = tally(&before.values().cloned().collect::<Vec<_>>());
    assert_eq!(
        spread.len(),
        10,
        "1000 keys over 10 endpoints, per endpoint: {spread:?}"
    );
    assert!(
        spread.values().all(|&c| c >= 30),
        "some endpoint got under 30 of 1000 keys: {spread:?}"
    );
    // Same key, same endpoint.
    let again = endpoint_per_key(&proxy, &keys[..100]);
    let moved = again.iter().filter(|(k, w)| before[*k] != **w).count();
    assert_eq!(
        moved, 0,
        "{moved} of 100 keys changed endpoint without any change"
    );

    // Remove ring-3 and reload by rewriting the file.
    let removed = "ring-3";
    let rest: Vec<&Echo> = echos
        .iter()
        .filter(|e| e.port() != echos[3].port())
        .collect();
    std::fs::write(proxy.config_path(), config("ring-2", &rest)).unwrap();
    wait_for("config version ring-2", || {
        (proxy.admin("GET", "/config_dump").json()["version"] == "ring-2").then_some(())
    });
    let after = endpoint_per_key(&proxy, &keys);
    let stayers: Vec<&String> = keys.iter().filter(|k| before[*k] != removed).collect();
    let kept = stayers.iter().filter(|k| before[**k] == after[**k]).count();
    let stability = kept as f64 * 100.0 / stayers.len() as f64;
    let orphans: Vec<&String> = keys.iter().filter(|k| before[*k] == removed).collect();
    let orphan_spread = tally(
        &orphans
            .iter()
            .map(|k| after[*k].clone())
            .collect::<Vec<_>>(),
    );
    eprintln!(
        "consistent hash: {kept}/{} keys not on {removed} stayed ({stability:.2} %); its {} keys \
         moved to {orphan_spread:?}",
        stayers.len(),
        orphans.len()
    );
    assert!(
        stability >= 95.0,
        "only {stability:.2} % ({kept} of {}) of the keys not on the removed endpoint stayed",
        stayers.len()
    );
    assert!(
        !orphan_spread.contains_key(removed) && !orphan_spread.contains_key(""),
        "keys of the removed endpoint went to {orphan_spread:?}"
    );
}

#[test]
fn mirror_copies_requests_and_never_slows_the_primary() {
    let primary = Backend::start("mirror-primary", "v1", &[]);
    let shadow = Backend::start("mirror-shadow", "v1", &[]);
    let hung = Echo::start_with("mirror-hung", "127.0.0.1:0", &["--hang"]);
    let closed = free_port();
    let cfg = format!(
        "version: client-1
services:
{}
  - name: shadow.default.svc.cluster.local
    hosts: [shadow]
    ports: [{{port: 80, protocol: HTTP}}]
    endpoints: [{}]
  - name: hung.default.svc.cluster.local
    hosts: [hung]
    ports: [{{port: 80, protocol: HTTP}}]
    endpoints: [{}]
  - name: closed.default.svc.cluster.local
    hosts: [closed]
    ports: [{{port: 80, protocol: HTTP}}]
    connectTimeout: 1s
    endpoints: [{{address: 127.0.0.1, port: {closed}}}]
virtualHosts:
  - name: backend
    hosts: [backend]
    routes:
      - name: to-hung
        match: [{{uri: {{prefix: /hung}}}}]
        route: {{service: {BACKEND}}}
        mirrors: [{{destination: {{service: hung.default.svc.cluster.local}}, percent: 100}}]
      - name: to-closed
        match: [{{uri: {{prefix: /closed}}}}]
        route: {{service: {BACKEND}}}
        mirrors: [{{destination: {{service: closed.default.svc.cluster.local}}, percent: 100}}]
      - name: mirrored
        route: {{service: {BACKEND}}}
        mirrors: [{{destination: {{service: shadow.default.svc.cluster.local}}, percent: 100}}]
",
        backend_service(&[primary.endpoint("v1")], ""),
        shadow.endpoint("v1"),
        direct(&hung),
    );
    let client = Proxy::start(&cfg);
    let lines = blast(client.outbound, "backend", "/m", 50, 1, "%{http_code}");
    assert!(
        lines.iter().all(|l| l == "200"),
        "primary statuses: {:?}",
        tally(&lines)
    );
    // The shadow's sidecar logs every copy with the `-shadow` host.
    let seen = wait_for("50 mirrored requests at the shadow", || {
        let l: Vec<Value> = shadow
            .proxy
            .access_log()
            .into_iter()
            .filter(|e| e["listener"] == "inbound")
            .collect();
        (l.len() >= 50).then_some(l)
    });
    let hosts = tally(
        &seen
            .iter()
            .map(|e| e["authority"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>(),
    );
    let shadow_served = served(&shadow.echo) - 1;
    eprintln!("mirror: shadow served {shadow_served}, authorities {hosts:?}");
    assert_eq!(
        hosts.get("backend-shadow").copied(),
        Some(50),
        "authority of the requests the shadow received: {hosts:?}"
    );
    assert_eq!(shadow_served, 50, "x-echo-served of the shadow echo");
    let sent = client
        .metric("halyard_mirror_requests_total{result=\"sent\"}")
        .unwrap_or(0.0);
    assert_eq!(sent, 50.0, "halyard_mirror_requests_total{{result=sent}}");

    // A mirror that hangs or refuses connections changes nothing for the primary.
    for (path, what) in [
        ("/hung", "a hung mirror"),
        ("/closed", "a closed mirror port"),
    ] {
        let lines = blast(
            client.outbound,
            "backend",
            path,
            50,
            1,
            "%{http_code} %{time_total}",
        );
        let slow: Vec<&String> = lines
            .iter()
            .filter(|l| {
                let (code, secs) = l.split_once(' ').unwrap_or(("0", "9"));
                code != "200" || secs.parse::<f64>().unwrap_or(9.0) >= 0.1
            })
            .collect();
        let worst = lines
            .iter()
            .filter_map(|l| l.split_once(' ')?.1.parse::<f64>().ok())
            .fold(0.0, f64::max);
        eprintln!("mirror to {what}: 50 primary requests, slowest {worst:.3} s");
        assert!(
            slow.is_empty(),
            "with {what}, primary responses not 200 or >= 100 ms: {slow:?}"
        );
    }
    let failed = wait_for("mirror failures counted", || {
        let v = client.metric("halyard_mirror_requests_total{result=\"failed\"}")?;
        (v >= 50.0).then_some(v)
    });
    assert!(
        failed >= 50.0,
        "halyard_mirror_requests_total{{result=failed}} = {failed}"
    );
}

#[test]
fn faults_abort_and_delay() {
    let echo = Echo::start("fault");
    let cfg = format!(
        "version: client-1
services:
  - name: faulty.default.svc.cluster.local
    hosts: [faulty]
    ports: [{{port: 80, protocol: HTTP}}]
    endpoints: [{}]
virtualHosts:
  - name: faulty
    hosts: [faulty]
    routes:
      - name: abort
        match: [{{uri: {{prefix: /abort}}}}]
        route: {{service: faulty.default.svc.cluster.local}}
        fault: {{abort: {{httpStatus: 418, percent: 10}}}}
      - name: delay
        match: [{{uri: {{prefix: /delay}}}}]
        route: {{service: faulty.default.svc.cluster.local}}
        fault: {{delay: {{fixedDelay: 0.1s, percent: 100}}}}
      - name: grpc
        match: [{{uri: {{prefix: /grpc}}}}]
        route: {{service: faulty.default.svc.cluster.local}}
        fault: {{abort: {{grpcStatus: 14}}}}
",
        direct(&echo)
    );
    let client = Proxy::start(&cfg);
    let n = 10_000;
    let lines = blast(client.outbound, "faulty", "/abort", n, 4, "%{http_code}");
    let t = tally(&lines);
    let teapots = t.get("418").copied().unwrap_or(0);
    let oks = t.get("200").copied().unwrap_or(0);
    assert_eq!(teapots + oks, n, "statuses: {t:?}");
    let share = teapots as f64 * 100.0 / n as f64;
    eprintln!("fault abort 10 %: {teapots} × 418 of {n} ({share:.2} %)");
    assert!(
        (8.0..=12.0).contains(&share),
        "418 share {share:.2} % ({teapots} of {n}), want 8-12 %"
    );
    let log = wait_for("all access log lines", || {
        let l = client.access_log();
        (l.len() >= n).then_some(l)
    });
    let fi = log
        .iter()
        .filter(|e| e["response_code"] == 418 && e["response_flags"] == "FI")
        .count();
    assert_eq!(
        fi, teapots,
        "log lines with 418 and flag FI vs 418s curl saw"
    );
    let aborted_upstream = log
        .iter()
        .filter(|e| e["response_code"] == 418 && !e["upstream_host"].is_null())
        .count();
    assert_eq!(
        aborted_upstream, 0,
        "aborted requests must not reach the upstream"
    );

    let (out, took) = curl_timed(&["-H", "Host: faulty", &url(client.outbound, "/delay")]);
    eprintln!("fault delay 100ms: {} after {took:?}", out.status);
    assert_eq!(out.status, 200, "{out:?}");
    assert!(
        took >= Duration::from_millis(100),
        "delayed request took {took:?}, want >= 100 ms"
    );
    let e = client.wait_log("the delayed request", |e| e["path"] == "/delay");
    assert_eq!(e["response_flags"], "DI", "access log line: {e}");
    assert!(
        e["duration"].as_u64().unwrap_or(0) >= 100,
        "logged duration of the delayed request: {e}"
    );

    let out = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: faulty",
        "-H",
        "Content-Type: application/grpc",
        &url(client.outbound, "/grpc/pkg.Svc/Method"),
    ]);
    let head = out.body.to_ascii_lowercase();
    assert_eq!(out.status, 200, "gRPC abort: {out:?}");
    assert!(
        head.contains("grpc-status: 14"),
        "gRPC abort response headers: {head}"
    );
    assert!(
        head.contains("content-type: application/grpc"),
        "gRPC abort response headers: {head}"
    );
    let fault_aborts = client
        .metric("halyard_fault_injected_total{kind=\"abort\"}")
        .unwrap_or(0.0);
    assert_eq!(
        fault_aborts,
        teapots as f64 + 1.0,
        "halyard_fault_injected_total{{kind=abort}} vs 418s + one gRPC abort"
    );
}

#[test]
fn redirect_rewrite_and_header_operations() {
    let b = Backend::start("ops", "v1", &[]);
    let cfg = format!(
        "version: client-1
services:
{}
virtualHosts:
  - name: backend
    hosts: [backend]
    routes:
      - name: moved
        match: [{{uri: {{exact: /old}}}}]
        redirect: {{uri: /new, authority: new.example}}
      - name: found
        match: [{{uri: {{prefix: /temp}}}}]
        redirect: {{uri: /elsewhere, code: 302}}
      - name: api
        match: [{{uri: {{prefix: /api/}}}}]
        route: {{service: {BACKEND}}}
        rewrite: {{uri: /v2/}}
      - name: headers
        route:
          service: {BACKEND}
          requestHeaders: {{set: {{x-dest: v1}}}}
          responseHeaders: {{set: {{x-dest-resp: v1}}}}
        requestHeaders:
          set: {{x-set: one}}
          add: {{x-add: two}}
          remove: [x-remove-me]
        responseHeaders:
          set: {{x-resp: set-by-route}}
          add: {{x-echo-workload: added}}
          remove: [x-echo-served]
",
        backend_service(&[b.endpoint("v1")], "")
    );
    let client = Proxy::start(&cfg);

    let out = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: backend",
        &url(client.outbound, "/old?q=1"),
    ]);
    // /old?q=1: exact uri match is on the path without the query.
    assert_eq!(out.status, 301, "redirect: {out:?}");
    let head = out.body.to_ascii_lowercase();
    assert!(
        head.contains("location: http://new.example/new\r\n"),
        "redirect Location header: {head}"
    );
    let out = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: backend:8000",
        &url(client.outbound, "/temp/x"),
    ]);
    assert_eq!(out.status, 302, "redirect with code 302: {out:?}");
    assert!(
        out.body
            .to_ascii_lowercase()
            .contains("location: http://backend:8000/elsewhere\r\n"),
        "302 Location header: {}",
        out.body
    );

    let out = curl(&[
        "-H",
        "Host: backend",
        &url(client.outbound, "/api/users?id=7"),
    ]);
    assert_eq!(out.status, 200, "rewrite: {out:?}");
    assert_eq!(
        out.json()["path"],
        "/v2/users?id=7",
        "path the app saw for /api/users?id=7 with rewrite /api/ → /v2/"
    );
    let e = client.wait_log("rewritten request", |e| {
        e["path"].as_str().is_some_and(|p| p.contains("users"))
    });
    assert_eq!(e["route_name"], "api", "access log line: {e}");

    let out = curl(&[
        "-D",
        "/dev/stderr",
        "-H",
        "Host: backend",
        "-H",
        "x-set: from-client",
        "-H",
        "x-remove-me: secret",
        "-H",
        "x-kept: yes",
        &url(client.outbound, "/hdr"),
    ]);
    assert_eq!(out.status, 200, "header ops: {out:?}");
    let h = &out.json()["headers"];
    assert_eq!(h["x-set"], "one", "x-set the app saw (set replaces): {h}");
    assert_eq!(h["x-add"], "two", "x-add the app saw: {h}");
    assert_eq!(
        h["x-dest"], "v1",
        "destination-level x-dest the app saw: {h}"
    );
    assert_eq!(h["x-kept"], "yes", "untouched header: {h}");
    assert!(
        h.get("x-remove-me").is_none(),
        "x-remove-me reached the app: {h}"
    );
    let head = out.stderr.to_ascii_lowercase();
    assert!(
        head.contains("x-resp: set-by-route\r\n"),
        "response header set by the route: {head}"
    );
    assert!(
        head.contains("x-dest-resp: v1\r\n"),
        "response header set by the destination: {head}"
    );
    assert!(
        head.contains("x-echo-workload: ops\r\n") && head.contains("x-echo-workload: added\r\n"),
        "response header add must append to the app's value: {head}"
    );
    assert!(
        !head.contains("x-echo-served"),
        "response header remove left x-echo-served: {head}"
    );
}

#[test]
fn go_style_durations_in_traffic_fields() {
    let echo = Echo::start("durations");
    let cfg = format!(
        "version: client-1
services:
  - name: d.default.svc.cluster.local
    hosts: [d]
    ports: [{{port: 80, protocol: HTTP}}]
    endpoints: [{}]
    outlierDetection: {{consecutive5xx: 5, baseEjectionTime: 500ms}}
virtualHosts:
  - name: d
    hosts: [d]
    routes:
      - name: slowed
        route: {{service: d.default.svc.cluster.local}}
        retries: {{attempts: 1, backoff: 25ms}}
        fault: {{delay: {{fixedDelay: 100ms}}}}
",
        direct(&echo)
    );
    let client = Proxy::start(&cfg);
    let (out, took) = curl_timed(&["-H", "Host: d", &url(client.outbound, "/d")]);
    assert_eq!(out.status, 200, "{out:?}");
    assert!(
        took >= Duration::from_millis(100),
        "fixedDelay 100ms: request took {took:?}"
    );
}

#[test]
fn inbound_sidecar_does_not_retry_app_errors() {
    // Istio configures retries on the caller's sidecar only; the server-side sidecar passes the
    // app's answer back as it is (else retries multiply: client attempts × inbound attempts).
    let b = Backend::start("no-inbound-retry", "v1", &["--fail-percent", "100"]);
    let out = curl(&["-H", "Host: backend", &url(b.proxy.inbound, "/once")]);
    assert_eq!(out.status, 503, "the app always answers 503: {out:?}");
    let app_saw = served(&b.echo) - 1;
    let e = b.proxy.wait_log("inbound /once", |e| e["path"] == "/once");
    assert_eq!(
        app_saw, 1,
        "the app received {app_saw} requests for one inbound request; log line: {e}"
    );
    assert_eq!(
        e["upstream_request_attempt_count"], 1,
        "inbound attempts in the access log: {e}"
    );
}

/// An `openssl s_server` answering TLS with a certificate for `CN=<name>`.
fn tls_server(dir: &std::path::Path, name: &str) -> (Proc, u16) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args([
        "s_server",
        "-quiet",
        "-www",
        "-accept",
        &port.to_string(),
        "-cert",
        &format!("{name}.pem"),
        "-key",
        &format!("{name}.key"),
    ]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let proc = Proc::spawn(&format!("s_server {name}"), &mut cmd);
    wait_for("s_server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    (proc, port)
}

/// TLS from the app is routed by its server name without being terminated: the subject of
/// the certificate curl sees tells which backend answered.
#[test]
fn tls_routes_pick_the_backend_by_server_name() {
    let tmp = TempDir::new("tls-routes");
    let (_a, pa) = tls_server(tmp.path(), "alpha");
    let (_b, pb) = tls_server(tmp.path(), "beta");
    let proxy = Proxy::start(&format!(
        "services:
  - {{name: alpha, hosts: [alpha.internal], ports: [{{port: 443, protocol: TCP}}], endpoints: [{{address: 127.0.0.1, port: {pa}}}]}}
  - {{name: beta, hosts: [beta.internal], ports: [{{port: 443, protocol: TCP}}], endpoints: [{{address: 127.0.0.1, port: {pb}}}]}}
virtualHosts:
  - name: external
    hosts: ['*.example.com']
    tlsRoutes:
      - name: to-alpha
        match: [{{sniHosts: [a.example.com]}}]
        destinations: [{{service: alpha}}]
      - name: rest
        match: [{{sniHosts: ['*.example.com']}}]
        destinations: [{{service: beta}}]
"
    ));
    let out_port = proxy.outbound.port();
    let subject = |sni: &str| {
        let target = format!("{sni}:{out_port}:127.0.0.1:{out_port}");
        let c = curl(&[
            "-kv",
            "--connect-to",
            &target,
            &format!("https://{sni}:{out_port}/"),
        ]);
        assert_eq!(
            c.status, 200,
            "curl to {sni} through the outbound listener: {}",
            c.stderr
        );
        c.stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("*  subject: "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no certificate subject in curl's output: {}", c.stderr))
    };
    assert!(
        subject("a.example.com").contains("CN=alpha"),
        "a.example.com → alpha"
    );
    assert!(
        subject("b.example.com").contains("CN=beta"),
        "b.example.com → beta"
    );
    assert!(
        subject("x.example.com").contains("CN=beta"),
        "x.example.com → beta"
    );
    // A server name of a service's own host reaches that service without any route.
    assert!(
        subject("alpha.internal").contains("CN=alpha"),
        "alpha.internal → alpha"
    );
}
