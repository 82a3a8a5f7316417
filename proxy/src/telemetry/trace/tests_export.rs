//! Exporter tests against in-test OTLP receivers built on opentelemetry-proto's own types:
//! a hyper HTTP server and a tonic `TraceServiceServer`, both on 127.0.0.1:0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{span, status, Span};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

use super::*;

/// One export request as a receiver saw it.
pub(super) struct Received {
    pub path: String,
    pub content_type: String,
    pub request: ExportTraceServiceRequest,
}

/// A running receiver: where it listens, what it got, how many connections it accepted.
pub(super) struct Receiver {
    pub addr: SocketAddr,
    pub rx: UnboundedReceiver<Received>,
    pub connections: Arc<AtomicUsize>,
}

/// An OTLP/HTTP receiver answering every request with `status`.
pub(super) async fn http_receiver(status: StatusCode) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_http(listener, status, true)
}

/// Serves OTLP/HTTP on `listener`; without keep-alive every connection carries one request.
pub(super) fn serve_http(listener: TcpListener, status: StatusCode, keep_alive: bool) -> Receiver {
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = unbounded_channel();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let tx = tx.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let content_type = req
                        .headers()
                        .get(CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    let _ = tx.send(Received {
                        path,
                        content_type,
                        request,
                    });
                    let reply = ExportTraceServiceResponse::default().encode_to_vec();
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header(CONTENT_TYPE, "application/x-protobuf")
                            .body(Full::new(Bytes::from(reply)))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Receiver {
        addr,
        rx,
        connections,
    }
}

struct GrpcSink(UnboundedSender<Received>);

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(Received {
            path: String::new(),
            content_type: String::new(),
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver (tonic's generated server).
async fn grpc_receiver() -> Receiver {
    serve_grpc(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

pub(super) fn serve_grpc(listener: TcpListener) -> Receiver {
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcSink(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Receiver {
        addr,
        rx,
        connections: Arc::new(AtomicUsize::new(0)),
    }
}

pub(super) fn config(endpoint: String, protocol: OtlpProtocol, flush: Duration) -> TraceConfig {
    TraceConfig {
        sampling_percent: 100.0,
        endpoint,
        protocol,
        service_name: "frontend.default".to_string(),
        resource: vec![
            ("k8s.namespace.name".to_string(), "default".to_string()),
            ("service.version".to_string(), "1.2".to_string()),
        ],
        flush_interval: flush,
    }
}

/// A tracer with its exporter spawned.
pub(super) fn start(cfg: TraceConfig) -> (Tracer, JoinHandle<()>, Arc<TraceMetrics>) {
    let metrics = Arc::new(TraceMetrics::new(&prometheus::Registry::new()).unwrap());
    let (tracer, exporter) = Tracer::new(cfg, Arc::clone(&metrics)).unwrap();
    (tracer, tokio::spawn(exporter), metrics)
}

/// Waits for `n` spans, returning them with the request that carried each.
pub(super) async fn collect(
    rx: &mut UnboundedReceiver<Received>,
    n: usize,
) -> Vec<(Arc<Received>, Span)> {
    let mut out = Vec::new();
    while out.len() < n {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("spans within 10 s")
            .expect("receiver alive");
        let got = Arc::new(got);
        for rs in &got.request.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((Arc::clone(&got), s.clone()));
                }
            }
        }
    }
    assert_eq!(out.len(), n);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn str_value(s: &str) -> Option<Value> {
    Some(Value::StringValue(s.to_string()))
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Sends three spans and checks everything the collector sees.
async fn round_trip(protocol: OtlpProtocol, mut receiver: Receiver) -> Receiver {
    let endpoint = format!("http://{}", receiver.addr);
    let (tracer, exporter, metrics) = start(config(endpoint, protocol, Duration::from_millis(20)));

    let mut h = HeaderMap::new();
    h.insert("traceparent", TP.parse().unwrap());
    h.insert("tracestate", "rojo=00f067aa0ba902b7".parse().unwrap());
    let server = tracer.begin(SpanKind::Server, &mut h).unwrap();
    let server_span_id = server.span_id_hex();
    server.finish(
        &tracer,
        SpanEnd {
            name: "backend.default.svc.cluster.local:8080/*",
            status_code: 503,
            attributes: &[
                ("http.request.method", AttrValue::Str("GET")),
                ("halyard.retries", AttrValue::Int(2)),
                ("halyard.mtls", AttrValue::Bool(true)),
            ],
        },
    );
    let client = tracer
        .begin(SpanKind::Client, &mut HeaderMap::new())
        .unwrap();
    let client_trace = client.trace_id_hex();
    let end = |name, status_code| SpanEnd {
        name,
        status_code,
        attributes: &[],
    };
    client.finish(&tracer, end("client", 404));
    let ok = tracer
        .begin(SpanKind::Server, &mut HeaderMap::new())
        .unwrap();
    ok.finish(&tracer, end("server-404", 404));

    let spans = collect(&mut receiver.rx, 3).await;
    for (got, _) in &spans {
        if protocol == OtlpProtocol::Http {
            assert_eq!(got.path, "/v1/traces");
            assert_eq!(got.content_type, "application/x-protobuf");
        }
        let rs = &got.request.resource_spans[0];
        let res = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(
            attr(res, "service.name").cloned(),
            str_value("frontend.default")
        );
        assert_eq!(
            attr(res, "k8s.namespace.name").cloned(),
            str_value("default")
        );
        assert_eq!(attr(res, "service.version").cloned(), str_value("1.2"));
        assert_eq!(
            attr(res, "telemetry.sdk.name").cloned(),
            str_value("halyard")
        );
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "halyard-proxy");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    }
    let by_name = |n: &str| &spans.iter().find(|(_, s)| s.name == n).unwrap().1;

    let s = by_name("backend.default.svc.cluster.local:8080/*");
    assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&s.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(hex(&s.span_id), server_span_id);
    assert_eq!(s.trace_state, "rojo=00f067aa0ba902b7");
    assert_eq!(s.kind, span::SpanKind::Server as i32);
    assert_eq!(
        s.status.as_ref().unwrap().code,
        status::StatusCode::Error as i32
    );
    assert_eq!(s.flags & 0x301, 0x301, "sampled, parent is remote");
    assert!(s.start_time_unix_nano > 0 && s.end_time_unix_nano >= s.start_time_unix_nano);
    let a = &s.attributes;
    assert_eq!(
        attr(a, "http.response.status_code"),
        Some(&Value::IntValue(503))
    );
    assert_eq!(attr(a, "http.request.method").cloned(), str_value("GET"));
    assert_eq!(attr(a, "halyard.retries"), Some(&Value::IntValue(2)));
    assert_eq!(attr(a, "halyard.mtls"), Some(&Value::BoolValue(true)));

    let c = by_name("client");
    assert_eq!(hex(&c.trace_id), client_trace);
    assert!(c.parent_span_id.is_empty(), "root span");
    assert_eq!(c.trace_state, "");
    assert_eq!(c.kind, span::SpanKind::Client as i32);
    assert_eq!(
        c.status.as_ref().unwrap().code,
        status::StatusCode::Error as i32
    );
    let o = by_name("server-404");
    assert_eq!(o.kind, span::SpanKind::Server as i32);
    assert_eq!(
        o.status.as_ref().unwrap().code,
        status::StatusCode::Unset as i32
    );
    assert_eq!(
        attr(&o.attributes, "http.response.status_code"),
        Some(&Value::IntValue(404))
    );

    // A second export goes over the same kept-alive connection.
    let again = tracer
        .begin(SpanKind::Server, &mut HeaderMap::new())
        .unwrap();
    again.finish(&tracer, end("again", 200));
    collect(&mut receiver.rx, 1).await;

    // A clone keeps the exporter going after the original is dropped.
    let clone = tracer.clone();
    drop(tracer);
    let last = clone
        .begin(SpanKind::Server, &mut HeaderMap::new())
        .unwrap();
    last.finish(&clone, end("last", 200));
    collect(&mut receiver.rx, 1).await;
    assert!(!exporter.is_finished(), "a clone still holds the tracer");
    drop(clone);
    tokio::time::timeout(Duration::from_secs(10), exporter)
        .await
        .expect("exporter ends once every tracer is dropped")
        .unwrap();
    assert_eq!(metrics.spans_exported.get(), 5);
    assert!(metrics.exports_ok.get() >= 3);
    assert_eq!(metrics.exports_error.get(), 0);
    assert_eq!(metrics.dropped_export_failed.get(), 0);
    assert_eq!(metrics.dropped_queue_full.get(), 0);
    receiver
}

#[tokio::test]
async fn http_export() {
    let receiver = http_receiver(StatusCode::OK).await;
    let receiver = round_trip(OtlpProtocol::Http, receiver).await;
    assert_eq!(receiver.connections.load(Ordering::SeqCst), 1, "keep-alive");
}

#[tokio::test]
async fn grpc_export() {
    round_trip(OtlpProtocol::Grpc, grpc_receiver().await).await;
}

#[tokio::test]
async fn http_custom_path() {
    let mut receiver = http_receiver(StatusCode::OK).await;
    let endpoint = format!("http://{}/custom/path", receiver.addr);
    let (tracer, _exporter, _) = start(config(
        endpoint,
        OtlpProtocol::Http,
        Duration::from_millis(10),
    ));
    let s = tracer
        .begin(SpanKind::Server, &mut HeaderMap::new())
        .unwrap();
    s.finish(
        &tracer,
        SpanEnd {
            name: "x",
            status_code: 200,
            attributes: &[],
        },
    );
    let got = collect(&mut receiver.rx, 1).await;
    assert_eq!(got[0].0.path, "/custom/path");
}
