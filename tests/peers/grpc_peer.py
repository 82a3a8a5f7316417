#!/usr/bin/env python3
# peer-env: grpc  (the venv tests/install-deps.sh builds from tests/requirements-grpc.txt)
"""gRPC peer for the end-to-end tests: grpcio on raw bytes (generic handlers, no codegen).

server
    Serves halyard.test.Echo on 127.0.0.1:0 (plaintext h2c) and prints "listening on PORT"
    to stderr. Unary echoes the request and sets the trailer `x-trailer: done`; Bidi echoes
    each message as soon as it arrives; Fail aborts with NOT_FOUND and a details message.
client --target HOST:PORT --authority NAME
    Unary with 1 MiB, a bidirectional ping-pong (each ping goes out only after the previous
    pong came back) and Fail. Prints a JSON summary on stdout, or "FAILED: ..." on stderr
    with exit code 1.
call --target HOST:PORT --authority NAME
    One Unary call; prints {"code": NAME, "details": TEXT, "trailing": {...}} as grpcio
    reports it (code OK on success).
"""
import argparse
import json
import queue
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "halyard.test.Echo"
UNARY = f"/{SERVICE}/Unary"
BIDI = f"/{SERVICE}/Bidi"
FAIL = f"/{SERVICE}/Fail"
FAIL_DETAILS = "no such thing: halyard.test/42"
TRAILER = ("x-trailer", "done")
# Every wait of the client is bounded by this many seconds.
TIMEOUT = 10.0
PING_PONG_ROUNDS = 20


def serve() -> None:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((TRAILER,))
        return request

    def bidi(requests, context: grpc.ServicerContext):
        for message in requests:
            yield message

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, FAIL_DETAILS)

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


class Failed(Exception):
    """A check of the client failed; the message says which and why."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


def describe(e: grpc.RpcError) -> str:
    return f"{e.code().name} {e.details()!r}"


def call_unary(channel: grpc.Channel) -> dict:
    payload = bytes(range(256)) * 4096  # 1 MiB
    try:
        reply, call = channel.unary_unary(UNARY).with_call(payload, timeout=TIMEOUT)
    except grpc.RpcError as e:
        raise Failed(f"Unary: {describe(e)}") from None
    check(reply == payload, f"Unary: echoed {len(reply)} bytes, not the {len(payload)} sent")
    trailers = dict(call.trailing_metadata() or ())
    check(trailers.get(TRAILER[0]) == TRAILER[1], f"Unary: trailing metadata {trailers}")
    return {"unary_bytes": len(reply), "trailer": trailers[TRAILER[0]]}


def call_bidi(channel: grpc.Channel) -> dict:
    # Requests come from a queue that is fed only after the previous reply arrived, so a proxy
    # that buffered either direction (or waited for the end of a stream) would stall a round.
    outgoing: "queue.Queue[bytes | None]" = queue.Queue()

    def requests():
        while (message := outgoing.get()) is not None:
            yield message

    call = channel.stream_stream(BIDI)(requests(), timeout=TIMEOUT * 3)
    end = object()
    incoming: "queue.Queue[object]" = queue.Queue()

    def read() -> None:
        try:
            for message in call:
                incoming.put(message)
            incoming.put(end)
        except grpc.RpcError as e:
            incoming.put(e)

    def next_reply(what: str) -> object:
        try:
            got = incoming.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failed(f"Bidi: {what}: nothing within {TIMEOUT:g} s") from None
        if isinstance(got, grpc.RpcError):
            raise Failed(f"Bidi: {what}: {describe(got)}")
        return got

    threading.Thread(target=read, daemon=True).start()
    try:
        for i in range(PING_PONG_ROUNDS):
            ping = f"ping {i}".encode()
            outgoing.put(ping)
            pong = next_reply(f"reply to ping {i}")
            check(pong == ping, f"Bidi: round {i} got {pong!r}, sent {ping!r}")
        outgoing.put(None)  # half-close
        last = next_reply("end of stream after half-close")
        check(last is end, f"Bidi: extra message {last!r} after the last ping")
        check(call.code() == grpc.StatusCode.OK, f"Bidi: status {call.code()}")
    finally:
        outgoing.put(None)
        call.cancel()  # no-op once the call is done
    return {"bidi_rounds": PING_PONG_ROUNDS}


def call_fail(channel: grpc.Channel) -> dict:
    try:
        reply = channel.unary_unary(FAIL)(b"x", timeout=TIMEOUT)
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"Fail: got {describe(e)}, not NOT_FOUND")
        check(e.details() == FAIL_DETAILS, f"Fail: details {e.details()!r}")
        return {"fail_status": e.code().name, "fail_details": e.details()}
    raise Failed(f"Fail: succeeded with {reply!r}")


def client(target: str, authority: str) -> dict:
    options = [
        ("grpc.default_authority", authority),
        # Talk to the proxy under test only, and report what it did without retrying.
        ("grpc.enable_http_proxy", 0),
        ("grpc.enable_retries", 0),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            raise Failed(f"channel to {target} not ready within {TIMEOUT:g} s") from None
        summary = {}
        summary.update(call_unary(channel))
        summary.update(call_bidi(channel))
        summary.update(call_fail(channel))
        return summary


def one_call(target: str, authority: str) -> dict:
    options = [
        ("grpc.default_authority", authority),
        ("grpc.enable_http_proxy", 0),
        ("grpc.enable_retries", 0),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            _, call = channel.unary_unary(UNARY).with_call(b"ping", timeout=TIMEOUT)
            return {"code": "OK", "details": None,
                    "trailing": dict(call.trailing_metadata() or ())}
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details(),
                    "trailing": dict(e.trailing_metadata() or ())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["server", "client", "call"])
    ap.add_argument("--target", help="HOST:PORT the client dials (the proxy)")
    ap.add_argument("--authority", default="grpc.local", help=":authority the client sends")
    args = ap.parse_args()
    if args.mode == "server":
        serve()
        return
    if not args.target:
        ap.error(f"{args.mode} needs --target")
    if args.mode == "call":
        print(json.dumps(one_call(args.target, args.authority)), flush=True)
        return
    try:
        summary = client(args.target, args.authority)
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
