"""The production topology for real: nginx (the repository's nginx.conf, rendered for free
local ports) in front of three `python -m app` nodes on one redis-server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from signaling_client.client import Refused, SignalingClient
from signaling_client.events import Frame

from tests.support.cluster import unique
from tests.support.nginx import NginxProcess
from tests.support.peers import barrier
from tests.support.procs import ROOT, NodeProcess, RedisServer, free_port
from tests.support.wait import ready_status, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Topology:
    nodes: list[NodeProcess]
    nginx: NginxProcess

    @property
    def url(self) -> str:
        return self.nginx.url

    def node_id(self, node: NodeProcess) -> str:
        return node.env["NODE_ID"]

    @property
    def node_ids(self) -> set[str]:
        return {self.node_id(n) for n in self.nodes}


def new_node(redis: RedisServer, prefix: str) -> NodeProcess:
    # DRAIN_SECONDS (read once the drain lands) keeps a stopping node's drain short here.
    return NodeProcess({"REDIS_URL": redis.url, "KEY_PREFIX": prefix,
                        "NODE_ID": unique("topo"), "DRAIN_SECONDS": "2"})


def start_all(nodes: list[NodeProcess]) -> None:
    for node in nodes:
        node.start(wait_ready=False)
    for node in nodes:
        wait_until(node.is_ready, 15, f"node {node.url}")


@pytest.fixture(scope="module")
def topology(redis_server: RedisServer) -> Iterator[Topology]:
    prefix = f"{unique('topo')}:"
    nodes = [new_node(redis_server, prefix) for _ in range(3)]
    nginx = NginxProcess([n.port for n in nodes])
    try:
        start_all(nodes)
        yield Topology(nodes, nginx.start())
    finally:
        nginx.cleanup()
        for node in nodes:
            node.close()


@pytest.fixture
def topo(topology: Topology, redis_server: RedisServer) -> Iterator[Topology]:
    """The module's topology, made whole again after a test that stopped a node."""
    yield topology
    dead = [n for n in topology.nodes if n.proc is None or n.proc.poll() is not None
            or ready_status(n.url) != 200]
    if not dead:
        return
    for node in dead:
        node.stop()  # a draining node finishes its drain first
        node.env["NODE_ID"] = unique("topo")  # the old id's leftovers are the reaper's
    start_all(dead)
    # A fresh nginx forgets which servers failed a moment ago.
    topology.nginx.stop()
    topology.nginx.start()




async def join_rooms(url: str, rooms: list[str], per_room: int,
                     session: aiohttp.ClientSession) -> dict[str, list[SignalingClient]]:
    """Connect one peer after another, as arriving users would."""
    clients: dict[str, list[SignalingClient]] = {}
    for room in rooms:
        for j in range(per_room):
            c = await SignalingClient.connect(url, room, f"p{j}", session=session)
            clients.setdefault(room, []).append(c)
    return clients


async def receive_expected(client: SignalingClient, offers: set[str], chats: set[str]) -> None:
    """Read until every expected offer and chat has arrived, each exactly once."""
    while offers or chats:
        frame = await client.recv()
        if frame.type == "offer":
            offers.remove(frame.data["sdp"])
            assert frame.to == client.peer_id
        elif frame.type == "chat":
            chats.remove(frame.data)
        else:
            assert frame.type == "new-peer", frame.raw


async def test_thirty_peers_in_ten_rooms_through_nginx_reach_every_node_and_each_other(
    topo: Topology,
) -> None:
    rooms = [unique("room") for _ in range(10)]
    async with aiohttp.ClientSession() as session:
        clients = await join_rooms(topo.url, rooms, 3, session)
        everyone = [c for cs in clients.values() for c in cs]
        # least_conn over long-lived connections: each new peer goes to the emptiest node.
        assert sorted(Counter(c.node for c in everyone).values()) == [10, 10, 10]
        assert {c.node for c in everyone} == topo.node_ids
        cross_node = 0
        for cs in clients.values():
            for c in cs:
                for d in cs:
                    if d is not c:
                        await c.offer(d.peer_id, {"sdp": f"{c.peer_id}>{d.peer_id}"})
                        cross_node += c.node != d.node
                await c.chat(f"hi from {c.peer_id}")
        await asyncio.gather(*(
            receive_expected(c, {f"{d.peer_id}>{c.peer_id}" for d in cs if d is not c},
                             {f"hi from {d.peer_id}" for d in cs})
            for cs in clients.values() for c in cs))
        # Nothing more (no duplicate) arrived before a final marker in each room.
        for cs in clients.values():
            extra = await barrier(cs)
            assert all(f == [] for f in extra.values()), extra
        assert cross_node == 60  # three nodes, three peers a room: every pair crosses nodes
        await asyncio.gather(*(c.close() for c in everyone))


async def raw_upgrade(url: str, path: str) -> tuple[int, dict[str, str], Frame]:
    """A WebSocket handshake by hand: status, response headers, first frame (welcome)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        status = int(head.split()[1])
        headers = {k.lower(): v.strip() for k, v in re.findall(r"\r\n([^:\r\n]+):([^\r\n]*)", head)}
        first, size = await reader.readexactly(2)
        assert first == 0x81  # one unfragmented text frame
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2))
        return status, headers, Frame.parse(await reader.readexactly(size))
    finally:
        writer.close()


async def test_the_upgrade_answer_names_the_node_like_the_welcome_does(topo: Topology) -> None:
    status, headers, welcome = await raw_upgrade(topo.url, f"/ws/{unique('room')}/alice")
    assert status == 101 and welcome.type == "welcome"
    assert headers["x-node-id"] == welcome.data["node"]
    assert headers["x-node-id"] in topo.node_ids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_while_a_node_stops_every_new_connection_through_nginx_succeeds_elsewhere(
    topo: Topology, sig: signal.Signals,
) -> None:
    victim, *others = topo.nodes
    async with aiohttp.ClientSession() as session:
        before = await join_rooms(topo.url, [unique("room")], 6, session)
        assert topo.node_id(victim) in {c.node for c in next(iter(before.values()))}
        victim.signal(sig)
        await asyncio.to_thread(wait_until, lambda: ready_status(victim.url) != 200, 10,
                                "victim down")
        # A burst of new peers, all at once: nginx retries whatever reaches the victim.
        room = unique("room")
        clients = await asyncio.gather(*(
            SignalingClient.connect(topo.url, room, f"n{i}", session=session)
            for i in range(15)))
        assert {c.node for c in clients} == {topo.node_id(n) for n in others}
        # They form one room across the remaining nodes: each knows every other one.
        everyone = {c.peer_id for c in clients}
        for c, frames in (await barrier(clients)).items():
            assert {f.type for f in frames} <= {"new-peer"}
            assert set(c.peers) | {f.data for f in frames} == everyone - {c.peer_id}
        await asyncio.gather(*(c.close() for cs in before.values() for c in cs))
        await asyncio.gather(*(c.close() for c in clients))

    def logged() -> list[str]:
        return [e["upstream_status"] for e in topo.nginx.access_entries() if room in e["uri"]]
    await asyncio.to_thread(wait_until, lambda: len(logged()) == 15, 10, "the 15 upgrades logged")
    # The victim was tried (refused: 502, or draining: 503) and the client never saw it.
    assert any(re.fullmatch(r"50[23], 101", status) for status in logged()), logged()


@pytest.fixture
async def refusing_node() -> AsyncIterator[tuple[TestServer, list[web.Request]]]:
    """A stand-in for a draining node: every request, upgrades included, gets 503."""
    seen: list[web.Request] = []

    async def refuse(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"error": {"code": "draining", "message": "draining"}},
                                 status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, seen
    await server.close()


async def test_an_upgrade_refused_with_503_is_retried_on_another_node_unseen_by_the_client(
    topo: Topology, refusing_node: tuple[TestServer, list[web.Request]],
) -> None:
    stub, seen = refusing_node
    real = topo.nodes[1]
    assert stub.port is not None
    nginx = NginxProcess([stub.port, real.port])
    await asyncio.to_thread(nginx.start)
    try:
        room = unique("room")
        clients = [await SignalingClient.connect(nginx.url, room, f"p{i}",
                                                 headers={"X-Forwarded-For": "203.0.113.9"})
                   for i in range(3)]
        assert {c.node for c in clients} == {topo.node_id(real)}
        assert seen, "least_conn never tried the refusing server"
        request = seen[0]
        assert request.version == aiohttp.HttpVersion11
        assert request.headers["Upgrade"] == "websocket"
        assert request.headers["Connection"].lower() == "upgrade"
        assert request.headers["X-Real-IP"] == "127.0.0.1"
        # nginx appends the address it saw: the rightmost entry is the trustworthy one.
        assert request.headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
        for c in clients:
            await c.close()

        def retried_logged() -> bool:
            return any(e["upstream_status"] == "503, 101" for e in nginx.access_entries())
        await asyncio.to_thread(wait_until, retried_logged, 10, "the retried upgrade logged")
    finally:
        await asyncio.to_thread(nginx.cleanup)


async def test_with_no_node_to_answer_nginx_refuses_like_a_node_with_503_json() -> None:
    nginx = NginxProcess([free_port(), free_port()])  # nothing listens there
    await asyncio.to_thread(nginx.start)
    try:
        with pytest.raises(Refused) as refused:
            await SignalingClient.connect(nginx.url, "room", "alice")
        assert refused.value.status == 503
        async with aiohttp.ClientSession() as session, \
                session.get(f"{nginx.url}/ws/room/alice") as r:
            assert r.status == 503 and r.content_type == "application/json"
            assert (await r.json())["error"]["code"] == "unavailable"
    finally:
        await asyncio.to_thread(nginx.cleanup)


async def test_nginx_health_metrics_and_a_json_access_log(topo: Topology) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{topo.url}/nginx-health") as r:
            assert r.status == 200 and await r.json() == {"status": "ok"}
            assert "X-Node-Id" not in r.headers  # answered by nginx itself
        async with session.get(f"{topo.url}/metrics") as r:
            assert r.status == 404 and "X-Node-Id" not in r.headers
        async with session.get(f"{topo.url}/health") as r:
            assert r.status == 200 and await r.json() == {"status": "ok"}
            node = r.headers["X-Node-Id"]
    assert node in topo.node_ids

    def health_logged() -> bool:
        return any(e["uri"] == "/health" for e in topo.nginx.access_entries())
    await asyncio.to_thread(wait_until, health_logged, 10, "GET /health in the access log")
    entries = topo.nginx.access_entries()  # every line parses as JSON
    entry = [e for e in entries if e["uri"] == "/health"][-1]
    assert entry["status"] == 200 and entry["node"] == node
    assert entry["upstream_addr"].startswith("127.0.0.1:")
    assert not any(e["uri"] == "/nginx-health" for e in entries)


def test_the_image_healthcheck_command_passes_on_a_node_and_fails_without_one(
    topo: Topology,
) -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    command = json.loads(re.search(r"^\s*CMD (\[.*\])\s*$",
                                   dockerfile.split("HEALTHCHECK", 1)[1], re.M)[1])  # type: ignore[index]
    assert command[0] == "python"
    argv = [sys.executable, *command[1:]]
    up = subprocess.run(argv, env={**os.environ, "PORT": str(topo.nodes[0].port)}, timeout=10)
    assert up.returncode == 0
    down = subprocess.run(argv, env={**os.environ, "PORT": str(free_port())}, timeout=10,
                          capture_output=True)
    assert down.returncode != 0

