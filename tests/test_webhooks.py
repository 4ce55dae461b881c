"""Room-event webhooks: nodes append events to a stream, `python -m workers.webhooks`
delivers them, signed, to a real HTTP receiver: retried, parked, never lost."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from signaling_client.client import SignalingClient

from tests.support.cluster import Cluster, in_process, unique
from tests.support.procs import NodeProcess, RedisServer
from tests.support.wait import eventually

SECRET = "webhook-test-secret"
HOLD = 0  # a status that means: do not answer until released


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return dict(orjson.loads(self.body))


@dataclass
class Receiver:
    """A webhook endpoint whose answer per request is decided by `policy`."""

    url: str = ""
    policy: Callable[[int, dict[str, Any]], int] = lambda n, event: 200
    got: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.policy(len(self.got) + 1, orjson.loads(body))
        self.got.append(Received(time.monotonic(), dict(request.headers), body, status))
        self._changed.set()
        if status == HOLD:
            await self.release.wait()
            status = 200
        return web.Response(status=status)

    async def until(self, done: Callable[[], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    def delivered(self) -> list[dict[str, Any]]:
        return [r.event for r in self.got if r.status == 200]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rec.url = str(server.make_url("/hook"))
    yield rec
    rec.release.set()
    await server.close()


@pytest.fixture
async def node(redis_server: RedisServer, start_server: Any) -> AsyncIterator[Cluster]:
    """One node on the real redis-server, appending room events, under its own prefix."""
    c = await in_process("redis", 1, start_server, redis_server.url, webhook_events=True)
    yield c
    assert c.redis is not None
    await c.redis.aclose()


@pytest.fixture(params=["redis", "rediscluster"])
async def any_node(request: pytest.FixtureRequest, start_server: Any
                   ) -> AsyncIterator[Cluster]:
    """`node`, on one redis-server or on the session's Redis Cluster."""
    url = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster").url
    c = await in_process("redis", 1, start_server, url, webhook_events=True)
    yield c
    assert c.redis is not None
    await c.redis.aclose()


@pytest.fixture
def workers() -> Iterator[Callable[..., NodeProcess]]:
    """Start `python -m workers.webhooks` processes; all are killed at the end."""
    started: list[NodeProcess] = []

    def start(c: Cluster, url: str, consumer: str, **env: str) -> NodeProcess:
        base = {"REDIS_URL": c.extra["url"], "KEY_PREFIX": c.keys.prefix,
                "WEBHOOK_URL": url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_CONSUMER": consumer,
                "WEBHOOK_BACKOFF_SECONDS": "0.05", "WEBHOOK_BACKOFF_MAX_SECONDS": "0.2"}
        proc = NodeProcess({**base, **env}, argv=[sys.executable, "-m", "workers.webhooks"])
        started.append(proc.start(wait_ready=False))
        return proc

    yield start
    for proc in started:
        proc.close()


def signed_correctly(r: Received) -> bool:
    """The receiver's check, written independently of the worker's code."""
    timestamp = r.headers["X-Signaling-Timestamp"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + r.body,
                        hashlib.sha256).hexdigest()
    return (hmac.compare_digest(r.headers["X-Signaling-Signature"], f"v1={expected}")
            and abs(time.time() - int(timestamp)) < 60
            and r.headers["X-Signaling-Event-Id"] == r.event["id"])


async def stream_ids(c: Cluster) -> list[str]:
    assert c.redis is not None
    return [entry_id.decode() for entry_id, _ in await c.redis.xrange(c.keys.events)]


async def nothing_pending(c: Cluster) -> None:
    redis = c.redis
    assert redis is not None

    async def acknowledged() -> bool:
        return not (await redis.xpending(c.keys.events, "webhooks"))["pending"]

    await eventually(acknowledged, what="every event to be acknowledged")


async def test_every_room_event_is_delivered_once_with_a_valid_signature(
    any_node: Cluster, receiver: Receiver, workers: Callable[..., NodeProcess]
) -> None:
    node = any_node
    room = unique("room")
    workers(node, receiver.url, "w1")
    a = await SignalingClient.connect(node.urls[0], room, "alice")
    b = await SignalingClient.connect(node.urls[0], room, "bob")
    again = await SignalingClient.connect(node.urls[0], room, "alice")  # takeover: no event
    await b.close()
    await a.close()
    await again.close()
    await receiver.until(lambda: len(receiver.got) >= 6)
    events = [(e["type"], e["peer"]) for e in receiver.delivered()]
    assert events == [("room-started", "alice"), ("peer-joined", "alice"), ("peer-joined", "bob"),
                      ("peer-left", "bob"), ("peer-left", "alice"), ("room-finished", "alice")]
    assert all(signed_correctly(r) for r in receiver.got)
    assert [e["id"] for e in receiver.delivered()] == await stream_ids(node)
    first = receiver.got[0].event
    assert first["room"] == room and first["node"] == a.node
    assert abs(first["time"] - time.time()) < 30
    await nothing_pending(node)
    assert len(receiver.got) == 6


async def test_a_failing_receiver_gets_retries_with_backoff_then_the_event_is_parked(
    node: Cluster, receiver: Receiver, workers: Callable[..., NodeProcess]
) -> None:
    receiver.policy = lambda n, event: 500 if n <= 3 or event["type"] == "peer-left" else 200
    workers(node, receiver.url, "w1", WEBHOOK_MAX_ATTEMPTS="4")
    a = await SignalingClient.connect(node.urls[0], unique("room"), "alice")
    await a.close()
    await receiver.until(lambda: any(e["type"] == "room-finished"
                                     for e in receiver.delivered()))
    assert [e["type"] for e in receiver.delivered()] == ["room-started", "peer-joined",
                                                         "room-finished"]
    started = receiver.got[:4]
    assert [r.status for r in started] == [500, 500, 500, 200]
    assert len({r.event["id"] for r in started}) == 1 and all(map(signed_correctly, started))
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(started)]
    assert [round(g, 2) >= d for g, d in zip(gaps, (0.05, 0.1, 0.2), strict=True)] == [True] * 3
    left = [r for r in receiver.got if r.event["type"] == "peer-left"]
    assert [r.status for r in left] == [500] * 4
    assert node.redis is not None
    [(_, parked)] = await node.redis.xrange(node.keys.events_parked)
    assert parked[b"type"] == b"peer-left" and parked[b"attempts"] == b"4"
    assert parked[b"error"] == b"HTTP 500" and parked[b"id"].decode() == left[0].event["id"]
    await nothing_pending(node)


async def test_killing_the_worker_mid_stream_loses_no_event(
    node: Cluster, receiver: Receiver, workers: Callable[..., NodeProcess]
) -> None:
    room = unique("room")
    hold_at = {4, 11}
    receiver.policy = lambda n, event: HOLD if n in hold_at else 200
    peers = [await SignalingClient.connect(node.urls[0], room, f"p{i}") for i in range(5)]
    env = {"WEBHOOK_CLAIM_IDLE_SECONDS": "0.5", "WEBHOOK_TIMEOUT_SECONDS": "0.25",
           "WEBHOOK_BACKOFF_MAX_SECONDS": "0.1"}
    first = workers(node, receiver.url, "w1", **env)
    await receiver.until(lambda: len(receiver.got) == 4)  # the 4th is held: not acknowledged
    first.kill()
    for peer in peers:  # events while no worker runs
        await peer.close()
    receiver.release.set()
    receiver.release = asyncio.Event()
    second = workers(node, receiver.url, "w1", **env)  # same name: its own pending first
    await receiver.until(lambda: len(receiver.got) == 11)
    second.kill()
    receiver.release.set()
    extra = await SignalingClient.connect(node.urls[0], unique("room"), "late")
    await extra.close()
    third = workers(node, receiver.url, "w2", **env)  # another name: claims w1's leftovers
    ids = await stream_ids(node)
    assert len(ids) == 6 + 6 + 4
    await receiver.until(lambda: set(ids) <= {e["id"] for e in receiver.delivered()})
    assert all(signed_correctly(r) for r in receiver.got)
    await nothing_pending(node)
    assert "claimed abandoned events" in third.logs()
