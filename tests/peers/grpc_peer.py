#!/usr/bin/env python3
"""gRPC peer for the end-to-end tests (grpcio, raw-bytes generic handlers, no codegen).

server: serves halyard.test.Echo/{Unary,Bidi,Fail}; prints "listening on PORT" to stderr.
client --target HOST:PORT --authority NAME: unary (1 MiB), bidi ping-pong, error status.
"""
import argparse
import json
import queue
import sys
from concurrent import futures

import grpc

SERVICE = "halyard.test.Echo"


def serve() -> None:
    def unary(req, ctx):
        ctx.set_trailing_metadata((("x-trailer", "done"),))
        return req

    def bidi(requests, ctx):
        for m in requests:
            yield m

    def fail(req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on {port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


def check(cond: bool, what: str) -> None:
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def client(target: str, authority: str) -> None:
    ch = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
    grpc.channel_ready_future(ch).result(timeout=10)

    payload = bytes(range(256)) * 4096  # 1 MiB
    resp, call = ch.unary_unary(f"/{SERVICE}/Unary").with_call(payload, timeout=10)
    check(resp == payload, "unary echo")
    trailers = dict(call.trailing_metadata() or ())
    check(trailers.get("x-trailer") == "done", f"trailer: {trailers}")

    # Ping-pong: each message goes out only after the previous answer came back, so a proxy
    # that buffered either direction would stall here.
    outgoing: "queue.Queue[bytes | None]" = queue.Queue()

    def requests():
        while True:
            m = outgoing.get()
            if m is None:
                return
            yield m

    replies = ch.stream_stream(f"/{SERVICE}/Bidi")(requests(), timeout=20)
    rounds = 0
    for i in range(20):
        msg = f"ping {i}".encode()
        outgoing.put(msg)
        got = next(replies)
        check(got == msg, f"bidi round {i}: {got!r}")
        rounds += 1
    outgoing.put(None)
    check(list(replies) == [], "bidi stream ended cleanly")

    try:
        ch.unary_unary(f"/{SERVICE}/Fail")(b"x", timeout=10)
        check(False, "Fail returned OK")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"status {e.code()}")
        check(e.details() == "no such thing", f"details {e.details()!r}")
        status = e.code().name

    print(json.dumps({"unary_bytes": len(resp), "trailer": trailers.get("x-trailer"),
                      "bidi_rounds": rounds, "fail_status": status}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["server", "client"])
    ap.add_argument("--target")
    ap.add_argument("--authority", default="grpc.local")
    a = ap.parse_args()
    if a.mode == "server":
        serve()
    else:
        client(a.target, a.authority)


if __name__ == "__main__":
    main()
