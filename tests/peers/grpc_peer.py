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
call --target HOST:PORT --authority NAME [--user USER]
    One Unary call (with metadata `x-user: USER` if given); prints {"code": NAME, "details": TEXT, "trailing": {...}} as grpcio
    reports it (code OK on success).
watch --target HOST:PORT --authority NAME --direct HOST:PORT --call NAME:METHOD:USER[:N] ...
    Long calls at once, each with metadata `x-user: USER`: Ticks streams N messages (default
    600), one every 100 ms; Hold is a unary call the server answers only after 60 s. Prints
    one JSON line per event as it happens: {"call", "event": "open"} once the call is under
    way (Ticks: its first message arrived; Hold: the server, asked over --direct, holds it),
    then {"call", "event": "end", "code", "details", "messages"}. Exits when all ended.
"""
import argparse
import json
import queue
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "halyard.test.Echo"
UNARY = f"/{SERVICE}/Unary"
BIDI = f"/{SERVICE}/Bidi"
FAIL = f"/{SERVICE}/Fail"
TICKS = f"/{SERVICE}/Ticks"
HOLD = f"/{SERVICE}/Hold"
HOLDING = f"/{SERVICE}/Holding"
TICK_INTERVAL = 0.1
HOLD_FOR = 60.0
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

    def ticks(request: bytes, context: grpc.ServicerContext):
        for i in range(int(request or b"600")):
            if i and not sleep_while_active(context, TICK_INTERVAL):
                return
            yield f"tick {i}".encode()

    holding = [0]
    lock = threading.Lock()

    def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            holding[0] += 1
        try:
            sleep_while_active(context, HOLD_FOR)
        finally:
            with lock:
                holding[0] -= 1
        return b"held"

    def count_holding(request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            return str(holding[0]).encode()

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
        "Holding": grpc.unary_unary_rpc_method_handler(count_holding),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on {port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


def sleep_while_active(context: grpc.ServicerContext, seconds: float) -> bool:
    """Sleeps up to `seconds`; False as soon as the call is no longer active."""
    deadline = time.monotonic() + seconds
    while context.is_active():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.02))
    return False


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


def channel_options(authority: str) -> list:
    # Talk to the proxy under test only, and report what it did without retrying.
    return [
        ("grpc.default_authority", authority),
        ("grpc.enable_http_proxy", 0),
        ("grpc.enable_retries", 0),
    ]


def client(target: str, authority: str) -> dict:
    with grpc.insecure_channel(target, options=channel_options(authority)) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            raise Failed(f"channel to {target} not ready within {TIMEOUT:g} s") from None
        summary = {}
        summary.update(call_unary(channel))
        summary.update(call_bidi(channel))
        summary.update(call_fail(channel))
        return summary


def one_call(target: str, authority: str, user: str | None) -> dict:
    metadata = (("x-user", user),) if user else None
    with grpc.insecure_channel(target, options=channel_options(authority)) as channel:
        try:
            _, call = channel.unary_unary(UNARY).with_call(
                b"ping", metadata=metadata, timeout=TIMEOUT)
            return {"code": "OK", "details": None,
                    "trailing": dict(call.trailing_metadata() or ())}
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details(),
                    "trailing": dict(e.trailing_metadata() or ())}


def watch(target: str, authority: str, direct: str, calls: list) -> None:
    out = threading.Lock()

    def emit(record: dict) -> None:
        with out:
            print(json.dumps(record), flush=True)

    holds = sum(1 for c in calls if c.split(":")[1] == "Hold")

    def wait_holding(channel: grpc.Channel) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            n = int(channel.unary_unary(HOLDING)(b"", timeout=TIMEOUT))
            if n >= holds:
                return
            time.sleep(0.02)
        raise Failed(f"the server held fewer than {holds} calls within {TIMEOUT:g} s")

    def run(spec: str, channel: grpc.Channel, server: grpc.Channel) -> None:
        name, method, user, *count = spec.split(":")
        metadata = (("x-user", user),)
        end = {"call": name, "event": "end", "code": "OK", "details": None, "messages": 0}
        try:
            if method == "Ticks":
                request = count[0].encode() if count else b"600"
                call = channel.unary_stream(TICKS)(request, metadata=metadata, timeout=90)
                for _ in call:
                    if end["messages"] == 0:
                        emit({"call": name, "event": "open"})
                    end["messages"] += 1
            elif method == "Hold":
                future = channel.unary_unary(HOLD).future(b"", metadata=metadata, timeout=90)
                wait_holding(server)
                emit({"call": name, "event": "open"})
                future.result()
                end["messages"] = 1
            else:
                raise Failed(f"unknown method {method}")
        except grpc.RpcError as e:
            end.update(code=e.code().name, details=e.details())
        except Failed as e:
            end.update(code="FAILED", details=str(e))
        emit(end)

    with grpc.insecure_channel(target, options=channel_options(authority)) as channel, \
            grpc.insecure_channel(direct, options=channel_options(authority)) as server:
        threads = [threading.Thread(target=run, args=(c, channel, server)) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["server", "client", "call", "watch"])
    ap.add_argument("--target", help="HOST:PORT the client dials (the proxy)")
    ap.add_argument("--authority", default="grpc.local", help=":authority the client sends")
    ap.add_argument("--user", help="metadata x-user of the call (call)")
    ap.add_argument("--direct", help="HOST:PORT of the server itself (watch)")
    ap.add_argument("--call", action="append", default=[], help="NAME:METHOD:USER[:N] (watch)")
    args = ap.parse_args()
    if args.mode == "server":
        serve()
        return
    if not args.target:
        ap.error(f"{args.mode} needs --target")
    if args.mode == "watch":
        if not args.direct or not args.call:
            ap.error("watch needs --direct and at least one --call")
        watch(args.target, args.authority, args.direct, args.call)
        return
    if args.mode == "call":
        print(json.dumps(one_call(args.target, args.authority, args.user)), flush=True)
        return
    try:
        summary = client(args.target, args.authority)
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
