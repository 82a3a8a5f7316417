//! Admin endpoints, configuration errors, reloads and graceful shutdown.

use std::process::Command;
use std::time::{Duration, Instant};

use halyard_tests::*;

#[test]
fn admin_endpoints() {
    let echo = Echo::start("adm");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    let r = proxy.admin("GET", "/ready");
    assert_eq!(r.status, 200);

    let dump = proxy.admin("GET", "/config_dump").json();
    assert_eq!(dump["version"], "test-1");
    assert_eq!(
        dump["config"]["services"][0]["name"],
        "echo.default.svc.cluster.local"
    );

    for _ in 0..3 {
        let out = curl(&["-H", "Host: echo.local", &url(proxy.outbound, "/m")]);
        assert_eq!(out.status, 200);
    }
    let n = wait_for("requests_total{code=200} >= 3", || {
        let v = proxy.metric("halyard_requests_total{code=\"200\",listener=\"outbound\"}")?;
        (v >= 3.0).then_some(v)
    });
    assert!(n >= 3.0);
    assert!(proxy
        .metric("halyard_build_info{")
        .is_some_and(|v| v == 1.0));
    assert!(proxy
        .metric("halyard_connections_active{listener=\"outbound\"}")
        .is_some());
    assert!(proxy
        .metric("halyard_connections_total{listener=\"outbound\"}")
        .is_some_and(|v| v >= 3.0));

    // Runtime log level.
    let r = proxy.admin("POST", "/logging?level=debug");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(proxy.admin("GET", "/logging").text().contains("debug"));
    let r = proxy.admin("POST", "/logging?level=not%20a%20level[");
    assert_eq!(r.status, 400, "{}", r.text());

    assert_eq!(proxy.admin("GET", "/nope").status, 404);
}

#[test]
fn quitquitquit_exits_zero() {
    let echo = Echo::start("quit");
    let mut proxy = Proxy::start(&echo_config(echo.port(), ""));
    assert_eq!(proxy.admin("POST", "/quitquitquit").status, 200);
    let status = proxy.proc.wait_exit(DEADLINE).expect("proxy exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let echo = Echo::start("drain");
    let mut proxy = Proxy::start(&echo_config(echo.port(), ""));
    let outbound = proxy.outbound;
    let slow = std::thread::spawn(move || {
        curl(&[
            "-H",
            "Host: echo.local",
            &url(outbound, "/slow?delay_ms=1500"),
        ])
    });
    // Signal only once the request is in flight.
    wait_for("the slow request to be active", || {
        (proxy.metric("halyard_connections_active{listener=\"outbound\"}")? >= 1.0).then_some(())
    });
    let sent = Instant::now();
    proxy.proc.signal("TERM");
    // New connections are refused while draining.
    wait_for("the listener to close", || {
        std::net::TcpStream::connect_timeout(&outbound, Duration::from_millis(200))
            .is_err()
            .then_some(())
    });
    let out = slow.join().unwrap();
    assert_eq!(out.status, 200, "in-flight request was cut: {out:?}");
    let status = proxy.proc.wait_exit(DEADLINE).expect("proxy exits");
    assert_eq!(status.code(), Some(0));
    assert!(sent.elapsed() < Duration::from_secs(5));
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let echo = Echo::start("drain-to");
    let mut proxy = Proxy::start_with(&echo_config(echo.port(), ""), &["--drain-timeout", "500ms"]);
    let outbound = proxy.outbound;
    let slow = std::thread::spawn(move || {
        curl(&[
            "-H",
            "Host: echo.local",
            &url(outbound, "/slow?delay_ms=10000"),
        ])
    });
    wait_for("the slow request to be active", || {
        (proxy.metric("halyard_connections_active{listener=\"outbound\"}")? >= 1.0).then_some(())
    });
    let sent = Instant::now();
    proxy.proc.signal("TERM");
    let status = proxy.proc.wait_exit(DEADLINE).expect("proxy exits");
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    // The request that outlived the drain timeout was cut, not answered.
    assert_ne!(slow.join().unwrap().status, 200);
}

fn run_with_config(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("badcfg");
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    run_proxy_on(&path)
}

#[test]
fn malformed_config_names_file_line_and_field_and_exits_2() {
    let (code, err) = run_with_config(
        "mesh.yaml",
        "version: v1\nservices:\n  - name: a\n    ports:\n      - port: 80\n        protocol: SMTP\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mesh.yaml:6:"), "{err}");
    assert!(err.contains("SMTP"), "{err}");

    let (code, err) = run_with_config(
        "mesh.yaml",
        "services:\n  - name: a\n    ports:\n      - port: 80\n    endpoints:\n      - address: 127.0.0.1\n        port: 70000\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mesh.yaml:7"), "{err}");
    assert!(err.contains("port"), "{err}");

    let (code, err) = run_with_config("mesh.json", "{\"services\": [ {\"name\": 5} ]}");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mesh.json:1"), "{err}");

    let (code, err) = run_with_config("mesh.yaml", "services: [\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mesh.yaml:"), "{err}");

    let out = Command::new(proxy_bin())
        .args(["--config", "/nonexistent/halyard.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/halyard.yaml"));
}

#[test]
fn sighup_and_file_changes_reload_and_bad_reloads_keep_the_old_config() {
    let a = Echo::start("before");
    let b = Echo::start("after");
    let proxy = Proxy::start(&echo_config(a.port(), ""));
    let who = || {
        let out = curl(&["-H", "Host: echo.local", &url(proxy.outbound, "/")]);
        out.json()["workload"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(who(), "before");
    let path = proxy.config_path();

    // A bad file is rejected, logged and the old config stays.
    std::fs::write(&path, "services:\n  - name: [oops\n").unwrap();
    proxy.proc.signal("HUP");
    wait_for("the rejection to be logged", || {
        proxy.stderr().contains("proxy.yaml:").then_some(())
    });
    assert_eq!(who(), "before");
    assert_eq!(
        proxy.admin("GET", "/config_dump").json()["version"],
        "test-1"
    );

    // A good one via SIGHUP takes effect.
    let next = echo_config(b.port(), "").replace("test-1", "test-2");
    std::fs::write(&path, next).unwrap();
    proxy.proc.signal("HUP");
    wait_for("version test-2", || {
        (proxy.admin("GET", "/config_dump").json()["version"] == "test-2").then_some(())
    });
    assert_eq!(who(), "after");

    // A plain file change is noticed without a signal.
    std::fs::write(&path, echo_config(a.port(), "").replace("test-1", "test-3")).unwrap();
    wait_for("version test-3", || {
        (proxy.admin("GET", "/config_dump").json()["version"] == "test-3").then_some(())
    });
    assert_eq!(who(), "before");
    assert!(proxy
        .metric("halyard_config_reloads_total{result=\"ok\"}")
        .is_some_and(|v| v >= 2.0));
}

#[test]
fn idle_memory_is_small() {
    let echo = Echo::start("rss");
    let proxy = Proxy::start(&echo_config(echo.port(), ""));
    let rss = proxy.proc.rss_kib().unwrap();
    eprintln!("idle RSS: {rss} KiB");
    assert!(rss < 32 * 1024, "idle RSS {rss} KiB");
}

#[test]
fn json_logs_follow_the_runtime_level_and_the_scrape_port_serves_only_metrics() {
    let echo = Echo::start("json-logs");
    let proxy = Proxy::start_with(
        &echo_config(echo.port(), ""),
        &["--log-format", "json", "--log-level", "warn"],
    );
    let lines = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    };
    // At `warn` the start-up `info` lines are filtered out.
    assert!(
        lines(&proxy.stderr()).iter().all(|l| l["level"] != "INFO"),
        "{}",
        proxy.stderr()
    );
    assert_eq!(proxy.admin("POST", "/logging?level=info").status, 200);
    let changed = wait_for("the level change logged as JSON", || {
        lines(&proxy.stderr())
            .into_iter()
            .find(|l| l["level"] == "INFO" && l["fields"]["message"] == "log level changed")
    });
    assert_eq!(changed["fields"]["filter"], "info", "{changed}");
    assert!(changed["target"].as_str().is_some(), "{changed}");

    // The scrape port: metrics and readiness, nothing of the admin API.
    let get = |path: &str| http(proxy.stats, "GET", path, &[], b"").expect("stats port");
    assert_eq!(get("/stats/prometheus").status, 200);
    assert!(get("/stats/prometheus")
        .text()
        .contains("halyard_build_info"));
    assert_eq!(get("/healthz/ready").status, 200);
    assert_eq!(get("/config_dump").status, 404);
    assert_eq!(get("/certs").status, 404);
    let r = http(proxy.stats, "POST", "/quitquitquit", &[], b"").expect("stats port");
    assert_eq!(r.status, 404, "the scrape port must not stop the proxy");
}
