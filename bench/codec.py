"""`python -m bench.codec`: the WebSocket codec alone, ours against well-kept libraries.

Each candidate runs as an echo server in its own process on uvloop: it reads a client's
text frames and writes each one back, which is the codec's whole share of a relay (parse
and unmask one frame, build and write one). The same load generator (another process,
raw sockets, masked frames, a window of frames in flight per connection) drives each in
turn, interleaved over rounds. The figure that counts is the server's CPU (user + system,
/proc) per echoed message, and the echo rate; the generator's CPU is not counted.

Candidates: this project's `app/edge/wsframe.py` on the raw transport (as `app/edge/connection.py`
uses it; also with one write per frame, as the libraries write), aiohttp's
`WebSocketResponse`, websockets (its asyncio server over its sans-I/O protocol) and
picows. It needs websockets and picows (the `bench` extra).

What it does not cover: the signaling logic, Redis, and fan-out; the full relay benchmark
(`python -m bench`) measures those, for this project's codec only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import sys
import time

from bench.procstat import cpu_seconds
from tests.support.attacker import OP_TEXT, client_frame
from tests.support.procs import free_port

CANDIDATES = ("ours", "ours-unbatched", "aiohttp", "websockets", "picows")


# -- servers -------------------------------------------------------------------------------

def serve(kind: str, port: int) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(SERVERS[kind](port))


async def _serve_ours(port: int, batched: bool = True) -> None:
    """Batched: one write per read, as the node's Outbox does; unbatched: one per frame,
    as the libraries do, to tell the codec's share from the write coalescing's."""
    from app.edge import wsframe

    class Echo(asyncio.Protocol):
        def __init__(self) -> None:
            self.reader = wsframe.FrameReader(1 << 20)
            self.upgraded = False
            self.head = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            if not self.upgraded:
                self.head += data
                if b"\r\n\r\n" not in self.head:
                    return
                request, _, data = self.head.partition(b"\r\n\r\n")
                headers = dict(line.split(": ", 1) for line in
                               request.decode().split("\r\n")[1:])
                accept = wsframe.accept_key(headers)
                assert accept is not None
                self.transport.write(wsframe.switching_protocols(accept, {}))
                self.upgraded = True
            out = [wsframe.text_frame(payload.decode().encode())  # as the node: UTF-8 check
                   for op, payload in self.reader.feed(data) if op == wsframe.OP_TEXT]
            if not batched:
                for frame in out:
                    self.transport.write(frame)
            elif out:
                self.transport.write(b"".join(out))

    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port)
    await server.serve_forever()


async def _serve_aiohttp(port: int) -> None:
    from aiohttp import WSMsgType, web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def _serve_websockets(port: int) -> None:
    from websockets.asyncio.server import serve as ws_serve

    async def echo(ws: object) -> None:
        async for message in ws:  # type: ignore[attr-defined]
            await ws.send(message)  # type: ignore[attr-defined]

    async with ws_serve(echo, "127.0.0.1", port, compression=None, max_size=1 << 20,
                        ping_interval=None):
        await asyncio.Event().wait()


async def _serve_picows(port: int) -> None:
    from picows import WSListener, WSMsgType, ws_create_server

    class Echo(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: object, frame: object) -> None:
            if frame.msg_type == WSMsgType.TEXT:  # type: ignore[attr-defined]
                transport.send(WSMsgType.TEXT, frame.get_payload_as_bytes())  # type: ignore[attr-defined]

    server = await ws_create_server(lambda _: Echo(), "127.0.0.1", port)
    await server.serve_forever()


async def _serve_ours_unbatched(port: int) -> None:
    await _serve_ours(port, batched=False)


SERVERS = {"ours": _serve_ours, "ours-unbatched": _serve_ours_unbatched,
           "aiohttp": _serve_aiohttp, "websockets": _serve_websockets, "picows": _serve_picows}


# -- load ----------------------------------------------------------------------------------

async def drive(port: int, conns: int, messages: int, window: int, payload: bytes
                ) -> float:
    """Echo `messages` frames over `conns` connections; returns the seconds it took."""
    frame = client_frame(OP_TEXT, payload)
    reply = len(payload) + (2 if len(payload) < 126 else 4)

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        await reader.readuntil(b"\r\n\r\n")
        sent = got = received = 0
        while got < count:
            burst = min(window - (sent - got), count - sent)
            if burst > 0:
                writer.write(frame * burst)
                sent += burst
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection")
            received += len(data)
            got = received // reply  # every echo has the same length
        writer.close()

    start = time.monotonic()
    await asyncio.gather(*(one(messages // conns) for _ in range(conns)))
    return time.monotonic() - start


def measure(kind: str, args: argparse.Namespace) -> tuple[float, float]:
    """(server CPU µs per message, messages per second) for one round of `kind`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.codec", "--serve", kind,
                             "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)  # start-up poll of a child process
        asyncio.run(drive(port, args.conns, 2000, args.window, args.payload.encode()))  # warm
        before = cpu_seconds(proc.pid)
        took = asyncio.run(drive(port, args.conns, args.messages, args.window,
                                 args.payload.encode()))
        used = cpu_seconds(proc.pid) - before
        return used / args.messages * 1e6, args.messages / took
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__.split("\n")[0])
    p.add_argument("--serve", choices=CANDIDATES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--conns", type=int, default=20)
    p.add_argument("--window", type=int, default=8, help="frames in flight per connection")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--payload", default='{"type":"ice","to":"bob","data":{"candidate":"'
                   'candidate:1 1 udp 2122260223 192.168.1.2 54321 typ host"}}')
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return
    kinds = args.candidates.split(",")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            results[kind].append(measure(kind, args))
            cpu, rate = results[kind][-1]
            print(f"round {r + 1} {kind:<11} {cpu:7.2f} µs/msg  {rate:9,.0f} msg/s", flush=True)
    ours = statistics.median(c for c, _ in results[kinds[0]])
    print(f"\n{args.messages:,} echoes of a {len(args.payload)}-byte frame, {args.conns} "
          f"connections, {args.window} in flight each; medians of {args.rounds} rounds\n")
    print(f"| codec | server CPU per message | echoes/s | CPU vs {kinds[0]} |")
    print("|---|---|---|---|")
    for kind in kinds:
        cpu = statistics.median(c for c, _ in results[kind])
        rate = statistics.median(r for _, r in results[kind])
        print(f"| {kind} | {cpu:.2f} µs | {rate:,.0f} | {cpu / ours:.2f}x |")


if __name__ == "__main__":
    main()
