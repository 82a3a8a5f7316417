#!/usr/bin/env python3
# peer-env: otlp  (the venv tests/install-deps.sh builds from tests/requirements-otlp.txt)
"""OTLP trace receiver for the end-to-end tests, on the official `opentelemetry-proto`
package and grpcio (pip: opentelemetry-proto grpcio), not on Halyard's own types.

    otlp_receiver.py --http-port 0 --grpc-port 0 --ready-file PATH --out PATH

Listens on 127.0.0.1 for OTLP/HTTP (POST /v1/traces, application/x-protobuf) and OTLP/gRPC
(opentelemetry.proto.collector.trace.v1.TraceService/Export); port 0 picks a free port.
Once both listen it writes {"http": port, "grpc": port} to the ready file (atomically), and
appends one JSON line per received span to --out, flushed after each line:
    {"transport": "http"|"grpc", "service_name", "trace_id", "span_id", "parent_span_id",
     "name", "kind", "status_code", "attributes": {key: value}, "trace_state",
     "start_ns", "end_ns"}
Ids are lower-case hex ("" for a root span's parent). Exits 0 on SIGTERM or SIGINT.
"""
import argparse
import json
import os
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

HOST = "127.0.0.1"
HTTP_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
# Largest OTLP/HTTP body accepted; a batch of 512 spans is far below this.
MAX_BODY = 16 * 1024 * 1024


def any_value(v):
    """AnyValue → plain JSON value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


class SpanLog:
    """Appends one JSON line per span; shared by both transports."""

    def __init__(self, path: str):
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")

    def record(self, transport: str, request) -> None:
        lines = []
        for rs in request.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
            service_name = resource.get("service.name", "")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    lines.append(json.dumps({
                        "transport": transport,
                        "service_name": service_name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                        "status_code": trace_pb2.Status.StatusCode.Name(span.status.code),
                        "attributes": {kv.key: any_value(kv.value) for kv in span.attributes},
                        "trace_state": span.trace_state,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                    }))
        with self._lock:
            for line in lines:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, log: SpanLog):
        self._log = log

    def Export(self, request, context):
        self._log.record("grpc", request)
        return trace_service_pb2.ExportTraceServiceResponse()


def http_handler(log: SpanLog):
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 so that exporters can keep their connection alive.
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit() or int(length) > MAX_BODY:
                self.close_connection = True
                return self._reply(411, b"content-length required\n")
            body = self.rfile.read(int(length))
            if self.path != HTTP_PATH:
                return self._reply(404, b"not found\n")
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type != PROTOBUF:
                return self._reply(415, b"expected application/x-protobuf\n")
            try:
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            except DecodeError as e:
                return self._reply(400, f"bad protobuf: {e}\n".encode())
            log.record("http", request)
            response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self._reply(200, response, PROTOBUF)

        def log_message(self, format, *args):  # noqa: A002 - keep stderr quiet
            pass

    return Handler


def write_ready(path: str, ports: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(ports, f)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    log = SpanLog(args.out)
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceServicer(log), grpc_server)
    grpc_port = grpc_server.add_insecure_port(f"{HOST}:{args.grpc_port}")
    if grpc_port == 0:
        print(f"cannot bind gRPC port {args.grpc_port}", file=sys.stderr)
        return 1
    grpc_server.start()

    httpd = ThreadingHTTPServer((HOST, args.http_port), http_handler(log))
    httpd.daemon_threads = True
    http_thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    http_thread.start()

    ports = {"http": httpd.server_address[1], "grpc": grpc_port}
    write_ready(args.ready_file, ports)
    print(f"listening on {json.dumps(ports)}", file=sys.stderr, flush=True)

    # Wake up now and then: the signal may land on a grpc thread, and Python runs handlers
    # only when the main thread executes bytecode.
    while not stop.wait(0.2):
        pass
    httpd.shutdown()
    httpd.server_close()
    grpc_server.stop(grace=1).wait()
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
