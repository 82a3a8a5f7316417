//! The exporter against the Python receiver `tests/peers/otlp_receiver.py` (official
//! opentelemetry-proto + grpcio). Ignored by default: it needs a Python with those packages,
//! named by `HALYARD_OTLP_PYTHON` (default `/var/tmp/otlp-venv/bin/python`).
//!
//! `cargo test -p halyard-proxy --lib telemetry::trace::tests_peer -- --ignored`

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/peers/otlp_receiver.py"
);

/// Kills the receiver if the test fails half-way.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn export_one(endpoint: String, protocol: OtlpProtocol, name: &str) -> (String, String) {
    let metrics = Arc::new(TraceMetrics::new(&prometheus::Registry::new()).unwrap());
    let cfg = TraceConfig {
        sampling_percent: 100.0,
        endpoint,
        protocol,
        service_name: "frontend.default".to_string(),
        resource: vec![("k8s.namespace.name".to_string(), "default".to_string())],
        flush_interval: DEFAULT_FLUSH_INTERVAL,
    };
    let (tracer, exporter) = Tracer::new(cfg, Arc::clone(&metrics)).unwrap();
    let exporter = tokio::spawn(exporter);
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    h.insert("tracestate", "rojo=00f067aa0ba902b7".parse().unwrap());
    let span = tracer.begin(SpanKind::Client, &mut h).unwrap();
    let ids = (span.trace_id_hex(), span.span_id_hex());
    span.finish(
        &tracer,
        SpanEnd {
            name,
            status_code: 503,
            attributes: &[
                ("http.request.method", AttrValue::Str("GET")),
                ("halyard.retries", AttrValue::Int(2)),
                ("halyard.mtls", AttrValue::Bool(true)),
            ],
        },
    );
    drop(tracer);
    tokio::time::timeout(Duration::from_secs(10), exporter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.spans_exported.get(), 1, "{protocol:?}");
    ids
}

#[tokio::test]
#[ignore = "needs python with opentelemetry-proto and grpcio (HALYARD_OTLP_PYTHON)"]
async fn python_receiver() {
    let python = std::env::var("HALYARD_OTLP_PYTHON")
        .unwrap_or_else(|_| "/var/tmp/otlp-venv/bin/python".to_string());
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "halyard-otlp-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (ready, out) = (dir.join("ready.json"), dir.join("spans.jsonl"));
    let mut peer = Peer(
        Command::new(&python)
            .arg(SCRIPT)
            .args(["--http-port", "0", "--grpc-port", "0", "--ready-file"])
            .arg(&ready)
            .arg("--out")
            .arg(&out)
            .spawn()
            .unwrap(),
    );
    let ports: serde_json::Value = wait_for("ready file", || {
        serde_json::from_str(&std::fs::read_to_string(&ready).ok()?).ok()
    });
    let port = |k: &str| ports[k].as_u64().unwrap();

    let http = export_one(
        format!("http://127.0.0.1:{}", port("http")),
        OtlpProtocol::Http,
        "via-http",
    )
    .await;
    let grpc = export_one(
        format!("http://127.0.0.1:{}", port("grpc")),
        OtlpProtocol::Grpc,
        "via-grpc",
    )
    .await;

    let lines = wait_for("two spans", || {
        let lines = read_lines(&out);
        (lines.len() >= 2).then_some(lines)
    });
    assert_eq!(lines.len(), 2);
    for (transport, name, (trace, span)) in [("http", "via-http", http), ("grpc", "via-grpc", grpc)]
    {
        let l = lines.iter().find(|l| l["name"] == name).unwrap();
        assert_eq!(l["transport"], transport);
        assert_eq!(l["service_name"], "frontend.default");
        assert_eq!(l["trace_id"], trace.as_str());
        assert_eq!(l["span_id"], span.as_str());
        assert_eq!(l["parent_span_id"], "00f067aa0ba902b7");
        assert_eq!(l["kind"], "SPAN_KIND_CLIENT");
        assert_eq!(l["status_code"], "STATUS_CODE_ERROR");
        assert_eq!(l["trace_state"], "rojo=00f067aa0ba902b7");
        assert_eq!(l["attributes"]["http.response.status_code"], 503);
        assert_eq!(l["attributes"]["http.request.method"], "GET");
        assert_eq!(l["attributes"]["halyard.retries"], 2);
        assert_eq!(l["attributes"]["halyard.mtls"], true);
        assert!(l["end_ns"].as_u64().unwrap() >= l["start_ns"].as_u64().unwrap());
        assert!(l["start_ns"].as_u64().unwrap() > 0);
    }

    // SIGTERM ends the receiver cleanly.
    let pid = peer.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_for("receiver exit", || peer.0.try_wait().unwrap());
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
