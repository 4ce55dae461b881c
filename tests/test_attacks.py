"""The limits, attacked: hostile clients against real node processes on a real redis-server.

Each test runs one attack while bystanders (two peers of another room, on the attacked node
and the other one) relay probes and a poller asks the attacked node's `/health`; it asserts
what a user would notice: the attacker closed or refused, the node's RSS growth bounded,
bystanders and victims never closed and served promptly, `/health` answering throughout.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from signaling_client.client import Closed, Refused, SignalingClient

from bench.procstat import rss_bytes
from tests.support.attacker import (
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Attacker,
    Clock,
    client_frame,
)
from tests.support.peers import barrier
from tests.support.topology import ProcessCluster

pytestmark = pytest.mark.integration

# RSS a node may gain from one attack, measured from just before it: the attack's own
# connections and buffers, bounded by the limits, plus the allocator's slack.
RSS_BOUND_KIB = 16 * 1024
# Bystanders' relay latency while the node is attacked (two cores shared with the attack).
P99_BOUND_S = 0.25


@pytest.fixture(scope="module")
def cluster() -> Iterator[ProcessCluster]:
    c = ProcessCluster.start(nodes=2, reaper=False, REQUEST_TIMEOUT_S=1,
                             ADMIN_TOKEN="attack-tests-admin-token-0123456789")
    yield c
    c.stop()


def port(c: ProcessCluster, i: int = 0) -> int:
    return c.nodes[i].port


def pid(c: ProcessCluster, i: int = 0) -> int:
    proc = c.nodes[i].proc
    assert proc is not None
    return proc.pid


@dataclass
class Watch:
    """Bystanders relaying probes across nodes, and /health polled, during an attack."""

    a: SignalingClient
    b: SignalingClient
    latencies: list[float] = field(default_factory=list)
    health_failures: int = 0
    health_checks: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def done(self) -> str:
        """End the watch (after at least 30 probes) and check what it saw."""
        self.stop.set()
        assert self.task is not None
        await self.task
        return self.check()

    async def run(self, url: str, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            seq = 0
            while not stop.is_set() or seq < 30:  # at least 30 probes: during and after
                seq += 1
                sent = time.monotonic()
                await self.a.ice("b", {"probe": seq})
                frame = await self.b.next_of("ice", timeout=5)
                assert frame.data == {"probe": seq}
                self.latencies.append(time.monotonic() - sent)
                self.health_checks += 1
                try:
                    async with http.get(f"{url}/health",
                                        timeout=aiohttp.ClientTimeout(total=1)) as r:
                        self.health_failures += r.status != 200
                except (aiohttp.ClientError, TimeoutError):
                    self.health_failures += 1
                await asyncio.sleep(0.02)  # a probe every 20 ms: a paced client, not a wait

    def check(self) -> str:
        assert self.latencies and self.health_checks >= 3, "the watch did not run"
        p99 = statistics.quantiles(self.latencies, n=100)[98] if len(self.latencies) > 2 \
            else max(self.latencies)
        assert self.health_failures == 0, f"/health failed {self.health_failures} times"
        assert p99 < P99_BOUND_S, f"bystanders' relay p99 {p99 * 1000:.0f} ms"
        return f"bystanders p99 {p99 * 1000:.1f} ms over {len(self.latencies)} probes"


@pytest.fixture
async def watch(cluster: ProcessCluster) -> AsyncIterator[Watch]:
    urls = cluster.urls()
    room = f"bystanders{time.monotonic_ns()}"
    w = Watch(await SignalingClient.connect(urls[0], room, "a"),
              await SignalingClient.connect(urls[1], room, "b"))
    await barrier([w.a, w.b])
    w.task = asyncio.create_task(w.run(urls[0], w.stop))
    yield w
    w.stop.set()
    await asyncio.gather(w.task, return_exceptions=True)
    await w.a.close()
    await w.b.close()


async def attack_for(seconds: float, attacker: Attacker, frames: bytes) -> tuple[bool, int]:
    """Send `frames` over and over for `seconds`; (closed by the node?, bytes sent)."""
    clock, sent = Clock(), 0
    while clock() < seconds:
        if not await attacker.send(frames):
            print(f"closed after {clock():.2f} s")
            return True, sent
        sent += len(frames)
        await asyncio.sleep(0)  # let the bystanders' probes run in this process too
    return False, sent


FLOODS = {  # what the attacker writes first, then what it repeats without reading
    "empty-fragments": (client_frame(OP_TEXT, b"{", fin=False),
                        client_frame(OP_CONT, b"", fin=False) * 2000),
    "1-byte-fragments": (client_frame(OP_TEXT, b"[", fin=False),
                         client_frame(OP_CONT, b"1", fin=False) * 2000),
    "pings": (b"", client_frame(OP_PING, b"p" * 125) * 200),
    "pongs": (b"", client_frame(OP_PONG, b"p" * 125) * 200),
}


@pytest.mark.parametrize("flood", list(FLOODS))
async def test_a_flood_that_never_reads_is_cut_off_with_bounded_memory(
    cluster: ProcessCluster, watch: Watch, flood: str,
) -> None:
    """An unfinished message of empty or 1-byte fragments (bounded by HARD_FRAME_BYTES, each
    fragment counting 64 bytes), or control frames as fast as possible (rate-limited)."""
    first, repeated = FLOODS[flood]
    before = rss_bytes(pid(cluster))
    attacker = await Attacker.connect(port(cluster), flood, "mallory")
    assert await attacker.send(first)
    closed, sent = await attack_for(10, attacker, repeated)
    grown = (rss_bytes(pid(cluster)) - before) // 1024
    print(f"{flood}: closed={closed} after {sent} bytes; RSS +{grown} KiB; {await watch.done()}")
    assert closed, f"the node kept taking {flood}"
    assert grown < RSS_BOUND_KIB
    attacker.close()


async def test_bursts_into_a_room_never_close_room_mates_that_read(
    cluster: ProcessCluster, watch: Watch,
) -> None:
    """V3: 40 bursts of 60 KB chats. The sender is the one limited; readers keep up."""
    w = watch
    urls = cluster.urls()
    room = f"burst{time.monotonic_ns()}"
    attacker = await SignalingClient.connect(urls[0], room, "mallory")
    victims = [await SignalingClient.connect(urls[i % 2], room, f"v{i}") for i in range(4)]
    await barrier([attacker, *victims])
    pad = "x" * 60_000
    for i in range(40):
        await attacker.chat({"i": i, "pad": pad})
    accepted, refused = 0, 0
    while accepted + refused < 40:  # the attacker hears its accepted chats, or refusals
        frame = await attacker.recv(timeout=20)
        if frame.type == "chat":
            accepted += 1
        elif frame.type == "error" and frame.data["code"] == "rate-limited":
            refused += 1
    got = await barrier(victims, via=victims[0])
    print(f"40 x 60 KB chats: {accepted} accepted, {refused} refused; {await w.done()}")
    assert refused > 0, "RATE_LIMIT_BYTES_PER_S let 2.4 MB through at once"
    for victim in victims:
        chats = [f.data["i"] for f in got[victim] if f.type == "chat"]
        assert chats == sorted(chats) and len(chats) == accepted, victim.peer_id
    for client in (attacker, *victims):
        await client.close()


async def test_offers_flooding_a_victim_on_another_node_do_not_close_it(
    cluster: ProcessCluster,
) -> None:
    urls = cluster.urls()
    room = f"offers{time.monotonic_ns()}"
    attacker = await SignalingClient.connect(urls[0], room, "mallory")
    victim = await SignalingClient.connect(urls[1], room, "victim")
    await barrier([attacker, victim])
    sdp = "v=0 " + "a" * 60_000
    for _ in range(100):
        await attacker.offer("victim", {"type": "offer", "sdp": sdp})
    got = await barrier([victim], via=attacker)
    offers = [f for f in got[victim] if f.type == "offer"]
    print(f"100 x 60 KB offers: {len(offers)} delivered")
    assert 0 < len(offers) < 100  # the sender was limited, and the victim kept reading
    with pytest.raises(TimeoutError):
        await victim.recv(timeout=0.5)  # nothing else came: above all, no close
    await victim.ping()
    assert (await victim.recv()).type == "pong"
    await attacker.close()
    await victim.close()


async def test_half_sent_requests_are_closed_and_count_against_the_address_cap(
    cluster: ProcessCluster,
) -> None:
    """W1: 300 connections that send half a request and wait."""
    clock = Clock()
    writers: list[asyncio.StreamWriter] = []

    async def half_request() -> tuple[float, bytes | BaseException]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port(cluster, 1))
        writers.append(writer)
        opened = clock()
        writer.write(b"GET /ws/room/half HTTP/1.1\r\nHost: x\r\n")
        try:
            end: bytes | BaseException = await asyncio.wait_for(reader.read(), 5)
        except (ConnectionResetError, TimeoutError) as exc:
            end = exc
        return clock() - opened, end

    try:
        tasks = []
        for _ in range(300):  # opened one after another, each read from the moment it opens
            tasks.append(asyncio.create_task(half_request()))
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
    finally:
        for writer in writers:
            writer.close()
    took = clock()
    print(f"300 half-sent requests all closed within {took:.2f} s (REQUEST_TIMEOUT_S=1)")
    # Closed: at the timeout (EOF), or at once when over the cap (EOF or a reset, depending
    # on whether the request had reached the node before it closed).
    ends = [end for _, end in results]
    assert all(end == b"" or isinstance(end, ConnectionResetError) for end in ends), \
        [e for e in ends if e != b""][:3]
    held = sorted(lasted for lasted, _ in results if lasted >= 0.5)
    print(f"{len(held)} held until the timeout ({held[0]:.2f}-{held[-1]:.2f} s), "
          f"{300 - len(held)} cut at once (over MAX_CONNS_PER_IP)")
    # The cap held while they were open: never more than MAX_CONNS_PER_IP (100) at a time,
    # and those it held were closed at REQUEST_TIMEOUT_S, not left open.
    assert 0 < len(held) <= 100
    assert held[-1] < 2.0
    assert took < 3.0
    async with await SignalingClient.connect(cluster.urls()[1], "after", "fine") as ok:
        assert ok.peers == []


async def test_frames_sent_before_the_upgrade_answer_are_read(cluster: ProcessCluster) -> None:
    """F, found: frames written with the upgrade request, before the 101, while the node
    joins the room in Redis. aiohttp pauses the socket once 64 KiB wait behind a request
    it is still handling; the connection took the socket over paused and never read again
    (until the heartbeat dropped it)."""
    for size in (100_000, 1_000_000):  # 1 MB: under HARD_FRAME_BYTES, refused as too large
        early = client_frame(OP_TEXT, b'{"type":"chat","data":"' + b"x" * size + b'"}')
        early += client_frame(OP_PING, b"alive?")
        attacker = await Attacker.connect(port(cluster), "early", "mallory", rcvbuf=1 << 16,
                                          early=early)
        clock = Clock()
        got = bytearray()
        async with asyncio.timeout(3):  # a stall: no pong and no close
            while b"\x8a\x06alive?" not in got:
                chunk = await attacker.reader.read(1 << 16)
                assert chunk, "closed instead of answering"
                got += chunk
        print(f"{size} B frame before the 101: read, pong after {clock():.2f} s")
        assert b'"code":"too-large"' in got  # refused, and the connection read on
        attacker.close()


async def test_the_node_never_stops_reading_a_connection_it_keeps_open(
    cluster: ProcessCluster,
) -> None:
    """F: a frame the node must refuse (invalid UTF-8), then frames of 1-2 MB."""
    attacker = await Attacker.connect(port(cluster), "stall", "mallory", rcvbuf=1 << 16)
    assert await attacker.send(client_frame(OP_TEXT, b"\xff\xfe not utf-8"))
    big = client_frame(OP_TEXT, b"x" * 1_500_000)
    clock = Clock()
    for _ in range(5):
        if not await attacker.send(big):  # False: closed; a stall would time out inside
            break
    await attacker.closed_by_node(5)  # raises TimeoutError if the node kept it open
    print(f"invalid UTF-8 then 1.5 MB frames: closed after {clock():.2f} s")
    attacker.close()


async def test_admin_guessing_is_throttled_and_ids_and_origins_are_strict(
    cluster: ProcessCluster,
) -> None:
    url = cluster.urls()[0]
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(30):
            async with http.get(f"{url}/admin/rooms",
                                headers={"Authorization": "Bearer guess"}) as r:
                statuses.append(r.status)
        assert statuses[:10] == [403] * 10 and statuses[-1] == 429, statuses
        async with http.get(f"{url}/ws/room/SERVER", headers={
                "Upgrade": "websocket", "Connection": "Upgrade"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "bad-peer"
    with pytest.raises(Refused) as refused:
        await SignalingClient.connect(url, "room", "eve", headers=[
            ("Origin", "http://localhost:3000"), ("Origin", "https://evil.example")])
    assert refused.value.status == 403


async def test_a_peer_closed_for_flooding_is_the_flooder(cluster: ProcessCluster) -> None:
    """The frame rate counts control frames: a pinging flooder is closed with 1008."""
    url = cluster.urls()[0]
    room = f"flood{time.monotonic_ns()}"
    reader = await SignalingClient.connect(url, room, "reader")
    flooder = await SignalingClient.connect(url, room, "flooder")
    await barrier([reader, flooder])
    for _ in range(5000):
        await flooder.ws.ping()
    with pytest.raises(Closed) as closed:
        while True:
            await flooder.recv(timeout=10)
    assert closed.value.code == 1008
    assert (await reader.next_of("peer-left")).data == "flooder"
    await flooder.close()
    await reader.close()
