//! Exporter failure paths: dead, failing and silent collectors, a full queue, shutdown
//! flushing, reconnecting.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;

use super::tests_export::{collect, config, http_receiver, serve_grpc, serve_http, start};
use super::*;

/// A port nothing listens on.
async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn finish_many(tracer: &Tracer, n: usize) {
    let started = Instant::now();
    for _ in 0..n {
        let s = tracer
            .begin(SpanKind::Server, &mut HeaderMap::new())
            .unwrap();
        s.finish(
            tracer,
            SpanEnd {
                name: "x",
                status_code: 200,
                attributes: &[],
            },
        );
        tokio::task::yield_now().await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "finish must not block"
    );
}

async fn expect_all_failed(endpoint: String, protocol: OtlpProtocol, n: usize, within: u64) {
    let (tracer, exporter, metrics) = start(config(endpoint, protocol, Duration::from_millis(10)));
    finish_many(&tracer, n).await;
    drop(tracer);
    tokio::time::timeout(Duration::from_secs(within), exporter)
        .await
        .expect("exporter ends despite the failing collector")
        .unwrap();
    assert_eq!(
        metrics.dropped_export_failed.get(),
        n as u64,
        "{protocol:?}"
    );
    assert!(metrics.exports_error.get() >= 1);
    assert_eq!(metrics.exports_ok.get(), 0);
    assert_eq!(metrics.spans_exported.get(), 0);
    assert_eq!(metrics.dropped_queue_full.get(), 0);
}

#[tokio::test]
async fn dead_endpoint_counts_export_failed() {
    let addr = dead_port().await;
    expect_all_failed(format!("http://{addr}"), OtlpProtocol::Http, 100, 10).await;
    expect_all_failed(format!("http://{addr}"), OtlpProtocol::Grpc, 100, 10).await;
}

#[tokio::test]
async fn http_error_status_counts_export_failed() {
    let receiver = http_receiver(StatusCode::SERVICE_UNAVAILABLE).await;
    expect_all_failed(
        format!("http://{}", receiver.addr),
        OtlpProtocol::Http,
        7,
        10,
    )
    .await;
}

#[tokio::test]
async fn silent_collector_times_out() {
    // Accepts connections and never answers: each export ends at the 5 s timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = Instant::now();
    tokio::join!(
        expect_all_failed(format!("http://{addr}"), OtlpProtocol::Http, 3, 20),
        expect_all_failed(format!("http://{addr}"), OtlpProtocol::Grpc, 3, 20),
    );
    assert!(started.elapsed() >= EXPORT_TIMEOUT - Duration::from_millis(100));
}

#[test]
fn full_queue_counts_queue_full() {
    let metrics = Arc::new(TraceMetrics::new(&prometheus::Registry::new()).unwrap());
    let cfg = config(
        "http://127.0.0.1:9".to_string(),
        OtlpProtocol::Http,
        DEFAULT_FLUSH_INTERVAL,
    );
    let (tracer, exporter) = Tracer::new(cfg, Arc::clone(&metrics)).unwrap();
    // The exporter is not running, so nothing drains the queue.
    for _ in 0..QUEUE_CAPACITY + 10 {
        let s = tracer
            .begin(SpanKind::Client, &mut HeaderMap::new())
            .unwrap();
        s.finish(
            &tracer,
            SpanEnd {
                name: "x",
                status_code: 200,
                attributes: &[],
            },
        );
    }
    assert_eq!(metrics.dropped_queue_full.get(), 10);
    drop(exporter);
    let s = tracer
        .begin(SpanKind::Client, &mut HeaderMap::new())
        .unwrap();
    s.finish(
        &tracer,
        SpanEnd {
            name: "x",
            status_code: 200,
            attributes: &[],
        },
    );
    assert_eq!(metrics.dropped_exporter_closed.get(), 1);
}

#[tokio::test]
async fn drop_flushes_in_batches() {
    let mut receiver = http_receiver(StatusCode::OK).await;
    let endpoint = format!("http://{}", receiver.addr);
    let metrics = Arc::new(TraceMetrics::new(&prometheus::Registry::new()).unwrap());
    let cfg = config(endpoint, OtlpProtocol::Http, Duration::from_secs(3600));
    let (tracer, exporter) = Tracer::new(cfg, Arc::clone(&metrics)).unwrap();
    for i in 0..600 {
        let s = tracer
            .begin(SpanKind::Server, &mut HeaderMap::new())
            .unwrap();
        let name = format!("span-{i}");
        s.finish(
            &tracer,
            SpanEnd {
                name: &name,
                status_code: 200,
                attributes: &[],
            },
        );
    }
    drop(tracer);
    // The flush interval is an hour: only the shutdown flush can deliver these in time.
    tokio::time::timeout(Duration::from_secs(10), exporter)
        .await
        .expect("exporter finishes after the last tracer is dropped");
    let mut sizes = Vec::new();
    while let Ok(got) = receiver.rx.try_recv() {
        sizes.push(got.request.resource_spans[0].scope_spans[0].spans.len());
    }
    assert_eq!(sizes, [MAX_EXPORT_BATCH, 600 - MAX_EXPORT_BATCH]);
    assert_eq!(metrics.spans_exported.get(), 600);
    assert_eq!(metrics.exports_ok.get(), 2);
}

/// A partial batch waits for the flush interval; a full one goes at once, without waiting.
#[tokio::test]
async fn full_batch_goes_before_the_flush_interval() {
    let mut receiver = http_receiver(StatusCode::OK).await;
    let endpoint = format!("http://{}", receiver.addr);
    let (tracer, _exporter, metrics) = start(config(
        endpoint,
        OtlpProtocol::Http,
        Duration::from_secs(3600),
    ));
    // The interval's first tick is immediate; let it pass with nothing queued.
    tokio::time::sleep(Duration::from_millis(50)).await;
    finish_many(&tracer, MAX_EXPORT_BATCH - 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.rx.try_recv().is_err(), "a partial batch waits");
    assert_eq!(metrics.exports_ok.get(), 0);
    finish_many(&tracer, 1).await;
    let got = collect(&mut receiver.rx, MAX_EXPORT_BATCH).await;
    assert!(
        got.iter().all(|(r, _)| Arc::ptr_eq(r, &got[0].0)),
        "one request"
    );
    // Counted once the collector's answer is read.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.spans_exported.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.spans_exported.get(), MAX_EXPORT_BATCH as u64);
}

#[tokio::test]
async fn http_reconnects_when_collector_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut receiver = serve_http(listener, StatusCode::OK, false);
    let endpoint = format!("http://{}", receiver.addr);
    let (tracer, _exporter, metrics) = start(config(
        endpoint,
        OtlpProtocol::Http,
        Duration::from_millis(10),
    ));
    for round in 1..=3 {
        finish_many(&tracer, 1).await;
        collect(&mut receiver.rx, 1).await;
        assert_eq!(receiver.connections.load(Ordering::SeqCst), round);
    }
    assert_eq!(metrics.dropped_export_failed.get(), 0);
}

/// Waits until the exporter has counted a failed export.
async fn wait_for_error(metrics: &TraceMetrics) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.exports_error.get() == 0 {
        assert!(Instant::now() < deadline, "no failed export within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn recovers_when_collector_comes_up() {
    for protocol in [OtlpProtocol::Http, OtlpProtocol::Grpc] {
        let addr = dead_port().await;
        let (tracer, _exporter, metrics) = start(config(
            format!("http://{addr}"),
            protocol,
            Duration::from_millis(10),
        ));
        finish_many(&tracer, 1).await;
        wait_for_error(&metrics).await;
        let listener = TcpListener::bind(addr).await.unwrap();
        let mut receiver = match protocol {
            OtlpProtocol::Http => serve_http(listener, StatusCode::OK, true),
            OtlpProtocol::Grpc => serve_grpc(listener),
        };
        finish_many(&tracer, 1).await;
        collect(&mut receiver.rx, 1).await;
        assert_eq!(metrics.dropped_export_failed.get(), 1, "{protocol:?}");
    }
}
