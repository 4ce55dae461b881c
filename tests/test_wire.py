"""The pipelined Redis wire (app/backend/wire.py) and the pub/sub protocol
(app/backend/pubsub_wire.py), each on a real redis-server of its own.

What the backend relies on: replies matched to commands in submission order, even with
many in one write; scripts reloaded when Redis lost them; fast `BackendUnavailable` while
Redis is gone, and service again once it is back, with no action from the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from app.backend import scripts
from app.backend.base import BackendUnavailable
from app.backend.pubsub_wire import PubSubWire
from app.backend.redis import client_from_url
from app.backend.wire import RedisWire
from tests.support.procs import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.kill()


@pytest.fixture
async def wire(server: RedisServer) -> AsyncIterator[RedisWire]:
    client = client_from_url(server.url.replace("/0", "/3"))
    w = RedisWire.for_client(client)
    assert w is not None
    await w.connect()
    task = asyncio.create_task(w.run())
    yield w
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.aclose()


async def test_replies_come_back_in_submission_order(wire: RedisWire,
                                                      server: RedisServer) -> None:
    futures = [await wire.submit("RPUSH", "order", i) for i in range(2000)]
    assert await asyncio.gather(*futures) == list(range(1, 2001))
    assert server.cli("-n", "3", "LRANGE", "order", "0", "2").split() == ["0", "1", "2"]
    assert server.cli("-n", "0", "EXISTS", "order").strip() == "0"  # SELECT from the URL


async def test_scripts_are_reloaded_when_redis_lost_them(wire: RedisWire,
                                                         server: RedisServer) -> None:
    server.cli("SCRIPT", "FLUSH")
    server.cli("-n", "3", "SADD", "peers", "bob")
    future = await wire.submit("EVALSHA", scripts.RELAY.sha, 1, "peers", "bob", "ch", b"x")
    assert await asyncio.wait_for(future, 5) == 1


async def test_unavailable_while_redis_is_down_then_back(wire: RedisWire,
                                                         server: RedisServer) -> None:
    server.kill()
    with pytest.raises(BackendUnavailable):
        async with asyncio.timeout(3):
            while True:  # the loss is noticed when the socket closes
                await (await wire.submit("PING"))
                await asyncio.sleep(0.01)
    server.start()  # the same port, empty: no scripts, no keys
    async with asyncio.timeout(5):
        while True:
            try:
                assert await (await wire.submit("PING")) == b"PONG"
                break
            except BackendUnavailable:
                await asyncio.sleep(0.05)


async def test_pubsub_wire_confirms_subscriptions_and_delivers_in_order(
        server: RedisServer) -> None:
    got: list[tuple[bytes, bytes]] = []
    all_in = asyncio.Event()

    def on_message(channel: bytes, payload: bytes) -> None:
        got.append((channel, payload))
        if len(got) == 500:
            all_in.set()

    sub = PubSubWire(client_from_url(server.url).connection_pool, on_message)
    await sub.connect()
    task = asyncio.create_task(sub.run())
    await sub.subscribe(b"ch")  # returns once live: what is published next arrives
    client = client_from_url(server.url)
    for i in range(500):
        await client.publish("ch", str(i))
    await sub.unsubscribe(b"ch")
    await client.publish("ch", "after")
    await client.aclose()
    await asyncio.wait_for(all_in.wait(), 5)
    assert got == [(b"ch", str(i).encode()) for i in range(500)]
    server.kill()  # a lost connection ends run() and fails later subscriptions
    await asyncio.wait_for(task, 5)
    with pytest.raises(BackendUnavailable):
        await sub.subscribe(b"other")
