#!/usr/bin/env python3
# peer-env: ws  (any of the test venvs: this peer needs only the standard library)
"""TCP echo server for the end-to-end tests (asyncio, one task per connection).

server --listen HOST:PORT
    Listens (port 0: any free port), prints "listening on PORT" to stderr, and echoes every
    byte of every connection until the peer closes it; holds thousands of idle connections.
"""
import argparse
import asyncio
import sys


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(listen: str) -> None:
    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(echo, host, int(port), backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on {bound}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["server"])
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on")
    args = ap.parse_args()
    asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
