//! Telemetry end to end, checked by peers we did not write: a real Prometheus (Debian's
//! package) scrapes two mutual-TLS sidecars configured by the control server and answers PromQL;
//! an OTLP receiver built on the official `opentelemetry-proto` Python package collects the
//! spans; access-log lines are parsed as JSON.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use halyard_tests::*;
use serde_json::Value;

const SERVICES: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: frontend, namespace: demo}
spec: {address: 127.0.0.1, serviceAccount: frontend, labels: {app: frontend, version: v1}}
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
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
";

fn backend_entry(app_port: u16, sidecar: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: backend
  namespace: demo
  annotations: {{halyard.dev/sidecar-address: \"{sidecar}\"}}
spec: {{address: 127.0.0.1, serviceAccount: backend, ports: {{http: {app_port}}}, labels: {{app: backend, version: v2}}}}
"
    )
}

fn mesh_config(otlp: &str, protocol: &str, sampling: f64, fields: &str) -> String {
    format!(
        "apiVersion: halyard.dev/v1alpha1
kind: MeshConfig
metadata: {{name: mesh, namespace: istio-system}}
spec:
  defaultTracingSampling: {sampling}
  tracing: {{otlpEndpoint: \"{otlp}\", protocol: {protocol}}}
  accessLogging: {{enabled: true{fields}}}
"
    )
}

/// The OTLP receiver peer (`tests/peers/otlp_receiver.py`).
struct Receiver {
    _proc: Proc,
    http: u16,
    grpc: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let ready = dir.join("otlp.json");
        let out = dir.join("spans.jsonl");
        let mut cmd = peer_command("otlp_receiver.py");
        cmd.args(["--http-port", "0", "--grpc-port", "0", "--ready-file"])
            .arg(&ready)
            .arg("--out")
            .arg(&out)
            .stdout(std::process::Stdio::null());
        let proc = Proc::spawn("otlp_receiver", &mut cmd);
        let ports: Value = wait_for("the OTLP receiver", || {
            serde_json::from_str(&std::fs::read_to_string(&ready).ok()?).ok()
        });
        let port = |k: &str| ports[k].as_u64().expect("port") as u16;
        Receiver {
            http: port("http"),
            grpc: port("grpc"),
            _proc: proc,
            out,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for `n` spans of trace `trace_id`.
    fn trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        wait_for(&format!("{n} spans of trace {trace_id}"), || {
            let t: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            (t.len() >= n).then_some(t)
        })
    }
}

/// A Prometheus server scraping `targets` every second.
struct Prometheus {
    _proc: Proc,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: sidecars
    metrics_path: /stats/prometheus
    static_configs: [{{targets: [{}]}}]
",
                list.join(", ")
            ),
        )
        .expect("prometheus config");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"));
        let proc = Proc::spawn("prometheus", &mut cmd);
        wait_for("Prometheus ready", || {
            (http(addr, "GET", "/-/ready", &[], b"").ok()?.status == 200).then_some(())
        });
        Prometheus { _proc: proc, addr }
    }

    /// An instant PromQL query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = http(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={q}"),
            &[],
            b"",
        )
        .expect("query Prometheus");
        let v = r.json();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query, when it has one.
    fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

struct Mesh {
    tmp: TempDir,
    cfg: PathBuf,
    _control: Control,
    _echo: Echo,
    frontend: Proxy,
    backend: Proxy,
    receiver: Receiver,
}

fn mesh(tag: &str, sampling: f64) -> Mesh {
    let tmp = TempDir::new(tag);
    let cfg = tmp.path().join("mesh");
    std::fs::create_dir_all(&cfg).expect("config dir");
    demo_tokens(
        tmp.path(),
        &[("frontend", "frontend"), ("backend", "backend")],
    );
    let receiver = Receiver::start(tmp.path());
    let echo = Echo::start("backend");
    let sidecar: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    write_atomic(
        &cfg,
        "mesh.yaml",
        &format!("{SERVICES}{}", backend_entry(echo.port(), sidecar)),
    );
    let otlp = format!("http://127.0.0.1:{}", receiver.http);
    write_atomic(
        &cfg,
        "meshconfig.yaml",
        &mesh_config(&otlp, "http", sampling, ""),
    );
    let control = Control::start(tmp.path(), &["--config", s(&cfg)]);
    let backend = control.sidecar(tmp.path(), "backend", "backend", &sidecar.to_string());
    let frontend = control.sidecar(tmp.path(), "frontend", "frontend", "127.0.0.1:0");
    Mesh {
        tmp,
        cfg,
        _control: control,
        _echo: echo,
        frontend,
        backend,
        receiver,
    }
}

/// Label `k` of a Prometheus result.
fn label<'a>(r: &'a Value, k: &str) -> &'a str {
    r["metric"][k].as_str().unwrap_or("")
}

#[test]
fn prometheus_scrapes_istio_metrics_with_identities_and_latency() {
    let m = mesh("obs-metrics", 0.0);
    // 180 quick requests and 20 that take 300 ms: p50 is fast, p99 lies in the 250-500 bucket.
    let codes = |path: &str| {
        curl_lines(&[
            "-o".into(),
            "/dev/null".into(),
            "-H".into(),
            "Host: backend:8080".into(),
            "-w".into(),
            "%{http_code}\\n".into(),
            url(m.frontend.outbound, path),
        ])
    };
    let quick = codes("/quick/[1-180]");
    let slow = codes("/slow/[1-20]?delay_ms=300");
    let missing = codes("/missing/[1-5]?status=404");
    assert!(
        quick.iter().chain(&slow).all(|l| l == "200"),
        "{quick:?} {slow:?}"
    );
    assert!(missing.iter().all(|l| l == "404"), "{missing:?}");

    let prom = Prometheus::start(m.tmp.path(), &[m.frontend.stats, m.backend.stats]);
    let total = |reporter: &str| {
        prom.value(&format!(
            "sum(istio_requests_total{{reporter=\"{reporter}\",destination_workload=\"backend\"}})"
        ))
    };
    wait_for("Prometheus to see 205 requests from both reporters", || {
        (total("source") == Some(205.0) && total("destination") == Some(205.0)).then_some(())
    });

    for reporter in ["source", "destination"] {
        let rows = prom.query(&format!(
            "sum by (source_workload, source_workload_namespace, source_principal, source_app, \
             source_version, destination_workload, destination_workload_namespace, \
             destination_principal, destination_app, destination_version, destination_service, \
             destination_service_name, destination_service_namespace, request_protocol, \
             response_code, response_flags, connection_security_policy) \
             (istio_requests_total{{reporter=\"{reporter}\"}})"
        ));
        eprintln!("{reporter}: {} label sets", rows.len());
        let ok = rows
            .iter()
            .find(|r| label(r, "response_code") == "200")
            .unwrap_or_else(|| panic!("no 200 row for {reporter}: {rows:?}"));
        let expect = [
            ("source_workload", "frontend"),
            ("source_workload_namespace", "demo"),
            ("source_app", "frontend"),
            ("source_version", "v1"),
            ("destination_workload", "backend"),
            ("destination_workload_namespace", "demo"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/demo/sa/backend",
            ),
            ("destination_app", "backend"),
            ("destination_version", "v2"),
            ("destination_service", "backend.demo.svc.cluster.local"),
            ("destination_service_name", "backend"),
            ("destination_service_namespace", "demo"),
            ("request_protocol", "http"),
            ("response_flags", "-"),
        ];
        for (k, v) in expect {
            assert_eq!(label(ok, k), v, "{reporter} {k}: {ok}");
        }
        assert_eq!(
            label(ok, "source_principal"),
            "spiffe://cluster.local/ns/demo/sa/frontend",
            "{reporter}: {ok}"
        );
        assert_eq!(ok["value"][1], "200", "{reporter} 200s: {ok}");
        let not_found = rows
            .iter()
            .find(|r| label(r, "response_code") == "404")
            .unwrap_or_else(|| panic!("no 404 row for {reporter}: {rows:?}"));
        assert_eq!(not_found["value"][1], "5", "{reporter} 404s");
        if reporter == "destination" {
            assert_eq!(label(ok, "connection_security_policy"), "mutual_tls");
        }
    }

    // Latency from the histogram matches what was sent.
    let q = |quantile: f64| {
        prom.value(&format!(
            "histogram_quantile({quantile}, sum by (le) \
             (istio_request_duration_milliseconds_bucket{{reporter=\"destination\"}}))"
        ))
        .unwrap_or(f64::NAN)
    };
    let (p50, p99) = (q(0.5), q(0.99));
    eprintln!("histogram: p50 {p50:.1} ms, p99 {p99:.1} ms");
    assert!(p50 < 25.0, "p50 {p50} ms, most requests were quick");
    assert!(
        (250.0..=500.0).contains(&p99),
        "p99 {p99} ms: 10 % of the requests took 300 ms"
    );
    let sizes = prom
        .value("sum(istio_response_bytes_count{reporter=\"source\"})")
        .unwrap_or(0.0);
    assert_eq!(sizes, 205.0, "istio_response_bytes counts every response");
    // Proxy health next to the Istio families.
    let up = prom.value("min(halyard_xds_connected)").unwrap_or(0.0);
    assert_eq!(up, 1.0, "both sidecars report their control-server stream");
    let rss = prom
        .value("min(process_resident_memory_bytes)")
        .unwrap_or(0.0);
    assert!(rss > 1e6, "process memory reported: {rss}");
}

#[test]
fn traces_cross_the_mesh_with_the_callers_context() {
    let m = mesh("obs-traces", 0.0);
    // W3C in, sampled by the caller although the mesh samples 0 %.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let out = curl(&[
        "-H",
        "Host: backend:8080",
        "-H",
        &format!("traceparent: 00-{trace}-{caller}-01"),
        "-H",
        "tracestate: vendor=opaque",
        &url(m.frontend.outbound, "/traced"),
    ]);
    assert_eq!(out.status, 200, "{out:?}");
    let seen = out.json()["headers"].clone();
    let spans = m.receiver.trace(trace, 2);
    eprintln!("spans: {spans:#?}");
    let client = spans
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .expect("client span");
    let server = spans
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .expect("server span");
    assert_eq!(
        client["parent_span_id"], caller,
        "the caller's span is the parent"
    );
    assert_eq!(
        server["parent_span_id"], client["span_id"],
        "server under client"
    );
    assert_eq!(client["service_name"], "frontend.demo");
    assert_eq!(server["service_name"], "backend.demo");
    assert_eq!(client["trace_state"], "vendor=opaque");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    // The server span names the peer that called it (the frontend sidecar, on loopback); a
    // client span has no client address.
    assert_eq!(server["attributes"]["client.address"], "127.0.0.1");
    assert!(
        client["attributes"].get("client.address").is_none(),
        "{client}"
    );
    // The app saw the context of the backend's server span.
    let app_tp = seen["traceparent"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        app_tp,
        format!("00-{trace}-{}-01", server["span_id"].as_str().unwrap_or("")),
        "headers the app saw: {seen}"
    );

    // B3 in, W3C out; a 64-bit B3 trace id is widened.
    let b3_trace = "a3ce929d0e0e4736";
    let out = curl(&[
        "-H",
        "Host: backend:8080",
        "-H",
        &format!("b3: {b3_trace}-{caller}-1"),
        &url(m.frontend.outbound, "/b3"),
    ]);
    assert_eq!(out.status, 200, "{out:?}");
    let wide = format!("0000000000000000{b3_trace}");
    let spans = m.receiver.trace(&wide, 2);
    let seen = out.json()["headers"].clone();
    let tp = seen["traceparent"].as_str().unwrap_or_default();
    assert!(tp.starts_with(&format!("00-{wide}-")), "{seen}");
    assert!(
        spans.iter().any(|s| s["parent_span_id"] == caller),
        "{spans:?}"
    );

    // Not sampled by the caller: nothing recorded, and the caller's context reaches the
    // backend through both sidecars exactly as it was sent.
    let quiet = "11111111111111111111111111111111";
    let quiet_tp = format!("00-{quiet}-{caller}-00");
    let out = curl(&[
        "-H",
        "Host: backend:8080",
        "-H",
        &format!("traceparent: {quiet_tp}"),
        &url(m.frontend.outbound, "/quiet"),
    ]);
    let seen = out.json()["headers"].clone();
    assert_eq!(seen["traceparent"], quiet_tp.as_str(), "{seen}");

    // The access log names the trace.
    let line = m
        .frontend
        .wait_log("the traced request", |e| e["path"] == "/traced");
    assert_eq!(line["trace_id"], trace, "{line}");

    // Switch the mesh to 100 % sampling over OTLP/gRPC: new traces start at the frontend.
    let otlp = format!("http://127.0.0.1:{}", m.receiver.grpc);
    let fields = ", fields: [start_time, method, path, response_code, duration, request_id, \
                  upstream_peer_uri_san, trace_id]";
    write_atomic(
        &m.cfg,
        "meshconfig.yaml",
        &mesh_config(&otlp, "grpc", 100.0, fields),
    );
    let fresh = wait_for("a trace exported over gRPC", || {
        let out = curl(&[
            "-H",
            "Host: backend:8080",
            &url(m.frontend.outbound, "/fresh"),
        ]);
        let tp = out.json()["headers"]["traceparent"].as_str()?.to_string();
        let id = tp.split('-').nth(1)?.to_string();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        m.receiver
            .spans()
            .iter()
            .any(|s| s["trace_id"] == id.as_str() && s["transport"] == "grpc")
            .then_some(id)
    });
    let spans = m.receiver.trace(&fresh, 2);
    assert!(
        spans.iter().any(|s| s["parent_span_id"] == ""),
        "the frontend's client span is the root: {spans:?}"
    );
    // The request its caller did not sample left no span (the exporters replaced by the
    // switch have flushed what they held by now).
    assert!(
        !m.receiver.spans().iter().any(|s| s["trace_id"] == quiet),
        "{:?}",
        m.receiver.spans()
    );
    // The configured access-log fields, and only those.
    let line = m
        .frontend
        .wait_log("a line with the configured fields", |e| {
            e["path"] == "/fresh" && e["trace_id"] == fresh.as_str()
        });
    let keys: Vec<&str> = line
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut want = vec![
        "start_time",
        "method",
        "path",
        "response_code",
        "duration",
        "request_id",
        "upstream_peer_uri_san",
        "trace_id",
    ];
    want.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, want, "{line}");
    assert_eq!(
        line["upstream_peer_uri_san"],
        "spiffe://cluster.local/ns/demo/sa/backend"
    );
    assert_eq!(line["trace_id"], fresh.as_str());
}

#[test]
fn sigterm_flushes_queued_spans_and_tracing_off_touches_no_header() {
    let tmp = TempDir::new("obs-flush");
    let receiver = Receiver::start(tmp.path());
    let echo = Echo::start("flush");
    // SIGTERM follows the request at once, usually before the 1 s batch timer: the shutdown
    // flush must deliver the span before the process exits.
    let traced = echo_config(
        echo.port(),
        &format!(
            "settings:\n  tracing: {{sampling: 100, otlpEndpoint: \"http://127.0.0.1:{}\", protocol: HTTP}}\n",
            receiver.http
        ),
    );
    let mut proxy = Proxy::start(&traced);
    let out = curl(&["-H", "Host: echo.local", &url(proxy.outbound, "/flush")]);
    assert_eq!(out.status, 200, "{out:?}");
    let tp = out.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let trace = tp.split('-').nth(1).unwrap_or_default().to_string();
    assert_eq!(trace.len(), 32, "a new trace started at the proxy: {tp}");
    proxy.proc.signal("TERM");
    let status = proxy.proc.wait_exit(DEADLINE).expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let spans = receiver.trace(&trace, 1);
    assert_eq!(spans[0]["kind"], "SPAN_KIND_CLIENT", "{spans:?}");
    assert_eq!(spans[0]["name"], "echo.default.svc.cluster.local:80/*");

    // Without tracing settings the proxy neither reads nor writes trace headers.
    let plain = Proxy::start(&echo_config(echo.port(), ""));
    let out = curl(&["-H", "Host: echo.local", &url(plain.outbound, "/plain")]);
    assert!(
        out.json()["headers"].get("traceparent").is_none(),
        "{out:?}"
    );
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    let out = curl(&[
        "-H",
        "Host: echo.local",
        "-H",
        &format!("b3: {b3}"),
        &url(plain.outbound, "/b3"),
    ]);
    assert_eq!(out.json()["headers"]["b3"], b3, "passed through untouched");
}
