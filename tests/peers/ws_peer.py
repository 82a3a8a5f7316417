#!/usr/bin/env python3
"""WebSocket peer for the end-to-end tests (the `websockets` library).

server: echoes text and binary; "close-me" closes with 4001 "bye"; prints "listening on PORT".
client --proxy HOST:PORT --host NAME: connects through the proxy to ws://NAME/chat.
"""
import argparse
import asyncio
import json
import socket
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


async def handler(ws):
    async for m in ws:
        if m == "close-me":
            await ws.close(4001, "bye")
            return
        await ws.send(m)


async def server() -> None:
    async with serve(handler, "127.0.0.1", 0, max_size=1 << 20) as s:
        port = s.sockets[0].getsockname()[1]
        print(f"listening on {port}", file=sys.stderr, flush=True)
        await asyncio.Future()


def check(cond: bool, what: str) -> None:
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


async def client(proxy: str, host: str) -> None:
    h, p = proxy.rsplit(":", 1)
    sock = socket.create_connection((h, int(p)), timeout=10)
    async with connect(f"ws://{host}/chat", sock=sock, max_size=1 << 20, open_timeout=10) as ws:
        for i in range(50):
            await ws.send(f"msg {i}")
            got = await asyncio.wait_for(ws.recv(), 10)
            check(got == f"msg {i}", f"text echo {i}: {got!r}")
        blob = bytes(range(256)) * 1024
        await ws.send(blob)
        got = await asyncio.wait_for(ws.recv(), 10)
        check(got == blob, "binary echo")
        await ws.send("close-me")
        try:
            await asyncio.wait_for(ws.recv(), 10)
            check(False, "expected the server to close")
        except ConnectionClosed:
            pass
        code, reason = ws.close_code, ws.close_reason
    check(code == 4001 and reason == "bye", f"close {code} {reason!r}")
    print(json.dumps({"text": 50, "binary_bytes": len(blob), "close_code": code,
                      "close_reason": reason}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["server", "client"])
    ap.add_argument("--proxy")
    ap.add_argument("--host", default="ws.local")
    a = ap.parse_args()
    asyncio.run(server() if a.mode == "server" else client(a.proxy, a.host))


if __name__ == "__main__":
    main()
