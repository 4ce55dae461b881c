"""A load generator process: `python -m bench.gen '<spec json>'`.

It talks to the coordinator over stdin/stdout in JSON lines, so that the coordinator can
read every process's CPU time exactly around the measured phase:

    gen: {"event": "ready"}      (peers connected and checked)
    coordinator: go
    gen: {"event": "done", "result": {...}}   (or {"event": "error", "error": "..."})
    coordinator: exit            (the gen closes its connections and exits)

Every scenario checks delivery itself: each receiver expects each sender's sequence
numbers 0, 1, 2, ... with no gap, repeat or reordering, and every frame sent must arrive.
Any breach is reported in `errors`, and the coordinator fails the run.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from bench.protocols import Protocol, protocol_for

CANDIDATE = ("candidate:842163049 1 udp 1677729535 192.0.2.10 46154 typ srflx raddr 10.0.0.2 "
             "rport 46154 generation 0 ufrag EsAw network-cost 999")
MAX_ERRORS = 20


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


async def wait_line(word: str) -> None:
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != word:
        raise SystemExit(f"expected {word!r} from the coordinator, got {line!r}")


class Conn:
    """One connected peer and its reader task."""

    __slots__ = ("credit", "expect", "peer", "room", "seq", "task", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, room: str, peer: str) -> None:
        self.ws = ws
        self.room = room
        self.peer = peer
        self.seq = 0  # next sequence number this peer sends
        self.expect: dict[str, int] = {}  # next sequence number expected from each sender
        self.credit: asyncio.Semaphore | None = None
        self.task: asyncio.Task[None] | None = None


Handler = Callable[[Conn, str, Any, Any], None]


class Scenario:
    """Connections, counters and the delivery check shared by every scenario."""

    def __init__(self, spec: dict[str, Any], proto: Protocol,
                 session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.proto = proto
        self.session = session
        self.urls: list[str] = spec["urls"]
        self.prefix: str = spec["prefix"]
        self.conns: dict[tuple[str, str], Conn] = {}
        self.errors: list[str] = []
        self.error_count = 0
        self.sent = 0  # deliveries expected
        self.received = 0
        self.latencies: list[float] = []
        self.sending = False
        self.windowed_run = bool(spec.get("window"))
        self.drained = asyncio.Event()
        self.started = 0.0
        self.elapsed = 0.0

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)

    async def connect(self, node: int, room: str, peer: str) -> tuple[Conn, list[str]]:
        ws, peers = await self.proto.open(self.session, self.urls[node], room, peer)
        conn = Conn(ws, room, peer)
        self.conns[(room, peer)] = conn
        conn.task = asyncio.create_task(self.read(conn))
        return conn, peers

    async def read(self, conn: Conn) -> None:
        parse, pong, on_frame = self.proto.parse, self.proto.pong, self.on_frame
        async for msg in conn.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            kind, sender, data = parse(msg.data)
            if kind == "ping":
                await conn.ws.send_str(pong)
            elif kind == "error":
                self.error(f"{conn.room}/{conn.peer} got error {data!r}")
            else:
                on_frame(conn, kind, sender, data)

    def on_frame(self, conn: Conn, kind: str, sender: Any, data: Any) -> None:
        if kind not in ("ice", "chat"):
            return  # new-peer, peer-left: not measured here
        seq = data["seq"]
        expected = conn.expect.get(sender, 0)
        if seq != expected:
            self.error(f"{conn.room}: {sender}->{conn.peer} got #{seq}, expected #{expected}")
        conn.expect[sender] = seq + 1
        self.latencies.append(time.monotonic() - data["ts"])
        self.received += 1
        if self.windowed_run:
            source = self.conns.get((conn.room, sender))
            if source is not None and source.credit is not None:
                source.credit.release()
        if not self.sending and self.received >= self.sent:
            self.drained.set()
            self.elapsed = time.monotonic() - self.started

    def payload(self, conn: Conn) -> dict[str, Any]:
        data = {"seq": conn.seq, "ts": time.monotonic(), "candidate": CANDIDATE, "sdpMid": "0"}
        conn.seq += 1
        return data

    async def connect_all(self, plan: list[tuple[int, str, str]], parallel: int = 20) -> None:
        """Join peers room by room (in order within a room, rooms in parallel)."""
        rooms: dict[str, list[tuple[int, str]]] = {}
        for node, room, peer in plan:
            rooms.setdefault(room, []).append((node, peer))
        gate = asyncio.Semaphore(parallel)

        async def join_room(room: str, members: list[tuple[int, str]]) -> None:
            async with gate:
                before: list[str] = []
                for node, peer in members:
                    _, peers = await self.connect(node, room, peer)
                    if sorted(peers) != sorted(before):
                        self.error(f"{room}/{peer}: welcome lists {peers}, expected {before}")
                    before.append(peer)

        await asyncio.gather(*(join_room(r, m) for r, m in rooms.items()))

    async def finish(self) -> dict[str, Any]:
        """Stop sending, wait for every expected delivery (bounded), report the checks."""
        self.sending = False
        if self.received >= self.sent:
            self.drained.set()
            self.elapsed = time.monotonic() - self.started
        try:
            async with asyncio.timeout(self.spec.get("drain", 5.0)):
                await self.drained.wait()
        except TimeoutError:
            pass
        if self.received != self.sent:
            self.error(f"delivered {self.received} of {self.sent} frames")
        return {"sent": self.sent, "received": self.received, "errors": self.errors,
                "error_count": self.error_count, "elapsed": self.elapsed or None,
                "latencies_ms": [round(x * 1000, 3) for x in self.latencies]}

    async def close(self) -> None:
        for conn in self.conns.values():
            if conn.task is not None:
                conn.task.cancel()
        closes = [conn.ws.close() for conn in self.conns.values()]
        for i in range(0, len(closes), 500):
            await asyncio.gather(*closes[i:i + 500], return_exceptions=True)

    async def setup(self) -> None:
        raise NotImplementedError

    async def run(self) -> dict[str, Any]:
        raise NotImplementedError


async def paced(rate: float, duration: float, senders: int,
                send: Callable[[int], Awaitable[None]]) -> None:
    """`rate` frames a second for `duration` seconds, spread over `senders` clients that
    each keep their own clock (`send(i)` for sender i), as independent users do.

    Each sender sends every `senders / rate` seconds from its own phase, so frames reach
    the nodes one by one, as they do from real clients, instead of in bursts a ticking
    loop would make (which a node that batches per event-loop turn would be paid for).
    """
    period = senders / rate
    start = time.monotonic()

    async def one(i: int) -> None:
        due = start + period * i / senders  # phases spread evenly over one period
        while due - start < duration:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(i)
            due += period

    await asyncio.gather(*(one(i) for i in range(senders)))


class Relay(Scenario):
    """One peer of each room per node; each sends ICE candidates to the other."""

    async def setup(self) -> None:
        plan = [(node, room, peer) for room in self.spec["rooms"]
                for node, peer in ((0, "a"), (1, "b"))]
        await self.connect_all(plan)
        self.senders = [(conn, "b" if conn.peer == "a" else "a") for conn in self.conns.values()]

    async def send(self, conn: Conn, to: str) -> None:
        self.sent += 1
        await conn.ws.send_str(self.proto.relay("ice", to, self.payload(conn)))

    async def run(self) -> dict[str, Any]:
        self.sending = True
        self.started = time.monotonic()
        duration: float = self.spec["duration"]
        window = self.spec.get("window")
        if window:
            stop = time.monotonic() + duration
            try:  # a lost frame would hold its sender's window forever: bound the wait
                async with asyncio.timeout(duration + 5):
                    await asyncio.gather(*(self.windowed(c, to, window, stop)
                                           for c, to in self.senders))
            except TimeoutError:
                self.error("a sender's window never reopened (frames lost?)")
        else:
            await paced(self.spec["rate"], duration, len(self.senders),
                        lambda i: self.send(*self.senders[i]))
        return await self.finish()

    async def windowed(self, conn: Conn, to: str, window: int, stop: float) -> None:
        conn.credit = asyncio.Semaphore(window)
        while time.monotonic() < stop:
            await conn.credit.acquire()
            await self.send(conn, to)


class Chat(Scenario):
    """Rooms of `size` peers alternating between the nodes; everyone chats to the room."""

    async def setup(self) -> None:
        size = self.spec["size"]
        plan = [(i % 2, room, f"p{i}") for room in self.spec["rooms"] for i in range(size)]
        await self.connect_all(plan)
        self.senders = list(self.conns.values())

    async def send(self, conn: Conn) -> None:
        self.sent += self.spec["size"]  # the room hears it, the sender included
        await conn.ws.send_str(self.proto.chat(self.payload(conn)))

    async def run(self) -> dict[str, Any]:
        self.sending = True
        self.started = time.monotonic()
        await paced(self.spec["rate"], self.spec["duration"], len(self.senders),
                    lambda i: self.send(self.senders[i]))
        return await self.finish()


class Join(Scenario):
    """Pairs join across the nodes; time from connect to welcome (or the join ack)."""

    async def setup(self) -> None:
        pass

    async def run(self) -> dict[str, Any]:
        self.started = time.monotonic()
        gate = asyncio.Semaphore(self.spec["parallel"])

        async def pair(i: int) -> None:
            async with gate:
                room = f"{self.prefix}j{i}"
                first, second = i % 2, 1 - i % 2
                await self.timed_join(first, room, "a", [])
                await self.timed_join(second, room, "b", ["a"])

        await asyncio.gather(*(pair(i) for i in range(self.spec["pairs"])))
        self.sent = self.received = len(self.latencies)
        return await self.finish()

    async def timed_join(self, node: int, room: str, peer: str, expect: list[str]) -> None:
        start = time.monotonic()
        _, peers = await self.connect(node, room, peer)
        self.latencies.append(time.monotonic() - start)
        if peers != expect:
            self.error(f"{room}/{peer}: welcome lists {peers}, expected {expect}")


class Idle(Scenario):
    """Peers that join (rooms of two, all on node 0) and then only answer pings."""

    async def setup(self) -> None:
        plan = [(0, f"{self.prefix}i{i // 2}", "ab"[i % 2]) for i in range(self.spec["peers"])]
        await self.connect_all(plan, parallel=self.spec.get("parallel", 50))

    async def run(self) -> dict[str, Any]:
        alive = sum(1 for c in self.conns.values() if not c.ws.closed)
        if alive != self.spec["peers"]:
            self.error(f"{alive} of {self.spec['peers']} idle peers still connected")
        return {"sent": 0, "received": 0, "errors": self.errors,
                "error_count": self.error_count, "latencies_ms": [], "connected": alive}


SCENARIOS: dict[str, type[Scenario]] = {"relay": Relay, "chat": Chat, "join": Join,
                                         "idle": Idle}


async def main(spec: dict[str, Any]) -> None:
    proto = protocol_for(spec["system"])
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        scenario = SCENARIOS[spec["scenario"]](spec, proto, session)
        try:
            async with asyncio.timeout(spec.get("setup_timeout", 120)):
                await scenario.setup()
            emit({"event": "ready", "errors": scenario.errors})
            await wait_line("go")
            emit({"event": "done", "result": await scenario.run()})
        except Exception as exc:
            emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
            raise SystemExit(1) from None
        await wait_line("exit")
        await scenario.close()


def raise_nofile() -> None:
    """Idle scenarios hold thousands of sockets: take the hard limit of descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(spec: dict[str, Any]) -> None:
    raise_nofile()
    try:
        import uvloop  # the generator's own CPU is not measured, but less of it is less noise
    except ImportError:
        asyncio.run(main(spec))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(spec))


if __name__ == "__main__":
    run(orjson.loads(sys.argv[1]))
