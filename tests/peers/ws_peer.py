#!/usr/bin/env python3
# peer-env: ws  (the venv tests/install-deps.sh builds from tests/requirements-ws.txt)
"""WebSocket peer for the end-to-end tests (the `websockets` library, asyncio API).

server
    Listens on 127.0.0.1:0 and prints "listening on PORT" to stderr; echoes text and binary
    messages; on the text message "close-me" it closes with code 4001, reason "bye".
client --proxy HOST:PORT --host NAME
    Opens a TCP connection to the proxy and speaks WebSocket to ws://NAME/chat over it: 50
    text messages and one 256 KiB binary message, each checked against its echo, then
    "close-me" and a check that the close code and reason came through. Prints a JSON summary
    on stdout, or "FAILED: ..." on stderr with exit code 1.
hold --proxy HOST:PORT --host NAME
    Opens a WebSocket the same way and keeps it: one message every 100 ms, each checked against
    its echo. Prints one JSON line per event as it happens: {"event": "open"} after the first
    echo, {"event": "echo", "n": N} for every later one, and {"event": "closed", "messages": N,
    "why": TEXT} when the connection ends (or an echo does not come within 10 s).
"""
import argparse
import asyncio
import json
import socket
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, WebSocketException

CLOSE_ME = "close-me"
CLOSE_CODE = 4001
CLOSE_REASON = "bye"
TEXT_MESSAGES = 50
BINARY = bytes(range(256)) * 1024  # 256 KiB
MAX_SIZE = 1 << 20
# Every wait of the client is bounded by this many seconds.
TIMEOUT = 10.0


async def echo(ws) -> None:
    async for message in ws:
        if message == CLOSE_ME:
            await ws.close(CLOSE_CODE, CLOSE_REASON)
            return
        await ws.send(message)


async def server() -> None:
    async with serve(echo, "127.0.0.1", 0, max_size=MAX_SIZE) as s:
        port = s.sockets[0].getsockname()[1]
        print(f"listening on {port}", file=sys.stderr, flush=True)
        await asyncio.get_running_loop().create_future()


class Failed(Exception):
    """A check of the client failed; the message says which and why."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


async def within(step, what: str):
    try:
        return await asyncio.wait_for(step, TIMEOUT)
    except asyncio.TimeoutError:
        raise Failed(f"{what}: nothing within {TIMEOUT:g} s") from None
    except ConnectionClosed as e:
        raise Failed(f"{what}: connection closed ({e})") from None


async def open_ws(proxy: str, host: str):
    addr, port = proxy.rsplit(":", 1)
    try:
        sock = socket.create_connection((addr, int(port)), timeout=TIMEOUT)
    except OSError as e:
        raise Failed(f"connect to the proxy at {proxy}: {e}") from None
    uri = f"ws://{host}/chat"
    try:
        # No permessage-deflate: the proxy's byte counts then match the payload sizes.
        ws = await connect(
            uri,
            sock=sock,
            max_size=MAX_SIZE,
            open_timeout=TIMEOUT,
            close_timeout=TIMEOUT,
            compression=None,
        )
    except (WebSocketException, OSError, asyncio.TimeoutError) as e:
        raise Failed(f"opening handshake for {uri}: {type(e).__name__}: {e}") from None
    return ws


async def hold(proxy: str, host: str) -> None:
    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)

    ws = await open_ws(proxy, host)
    n = 0
    why = "closed"
    try:
        while True:
            text = f"hold {n}"
            await ws.send(text)
            got = await asyncio.wait_for(ws.recv(), TIMEOUT)
            if got != text:
                why = f"echo {got!r} of {text!r}"
                break
            emit({"event": "open"} if n == 0 else {"event": "echo", "n": n})
            n += 1
            await asyncio.sleep(0.1)
    except ConnectionClosed as e:
        why = f"connection closed ({e})"
    except asyncio.TimeoutError:
        why = f"no echo within {TIMEOUT:g} s"
    except OSError as e:
        why = f"{type(e).__name__}: {e}"
    emit({"event": "closed", "messages": n, "why": why})


async def client(proxy: str, host: str) -> dict:
    ws = await open_ws(proxy, host)
    async with ws:
        for i in range(TEXT_MESSAGES):
            text = f"message {i}"
            await within(ws.send(text), f"send text {i}")
            got = await within(ws.recv(), f"echo of text {i}")
            check(got == text, f"text {i}: echoed {got!r}")
        await within(ws.send(BINARY), "send binary")
        got = await within(ws.recv(), "echo of binary")
        check(isinstance(got, bytes), f"binary echo came back as {type(got).__name__}")
        check(got == BINARY, f"binary echo: {len(got)} bytes that differ from the sent ones")
        await within(ws.send(CLOSE_ME), "send close-me")
        try:
            extra = await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosed:
            pass
        except asyncio.TimeoutError:
            raise Failed(f"no close within {TIMEOUT:g} s after {CLOSE_ME}") from None
        else:
            raise Failed(f"got {extra!r} instead of a close after {CLOSE_ME}")
    code, reason = ws.close_code, ws.close_reason
    check(
        (code, reason) == (CLOSE_CODE, CLOSE_REASON),
        f"close code/reason {code} {reason!r}, expected {CLOSE_CODE} {CLOSE_REASON!r}",
    )
    return {
        "handshake_status": ws.response.status_code,
        "text_messages": TEXT_MESSAGES,
        "binary_bytes": len(BINARY),
        "close_code": code,
        "close_reason": reason,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["server", "client", "hold"])
    ap.add_argument("--proxy", help="HOST:PORT the client connects to (the proxy)")
    ap.add_argument("--host", default="ws.local", help="host of the ws:// URI (Host header)")
    args = ap.parse_args()
    if args.mode == "server":
        asyncio.run(server())
        return
    if not args.proxy:
        ap.error(f"{args.mode} needs --proxy")
    if args.mode == "hold":
        try:
            asyncio.run(hold(args.proxy, args.host))
        except Failed as e:
            print(json.dumps({"event": "closed", "messages": 0, "why": str(e)}), flush=True)
        return
    try:
        summary = asyncio.run(client(args.proxy, args.host))
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
