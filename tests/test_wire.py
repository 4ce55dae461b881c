"""The pipelined Redis wire (app/backends/rediswire/wire.py) on a real redis-server of its own.

What the backend relies on: replies matched to commands in submission order, even with
many in one write; scripts reloaded when Redis lost them; a lost connection reported
once and refused at once until the supervisor connects and opens it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from app.backends.rediswire import scripts
from app.backends.rediswire.wire import RedisWire
from app.backends.single import client_from_url
from app.core.ports import BackendUnavailable
from tests.support.procs import RedisServer


@pytest.fixture
def server() -> Iterator[RedisServer]:
    s = RedisServer().start()
    yield s
    s.close()


@pytest.fixture
async def lost() -> list[str]:
    return []


@pytest.fixture
async def wire(server: RedisServer, lost: list[str]) -> AsyncIterator[RedisWire]:
    client = client_from_url(server.url.replace("/0", "/3"))
    w = RedisWire(client, lost.append)
    await w.connect()
    w.open()
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
    server.cli("-n", "3", "SADD", "peers", "bob", "carol")
    future = await wire.submit("EVALSHA", scripts.SYNC.sha, 1, "peers", "ch", b"")
    assert await asyncio.wait_for(future, 5) == 2  # the script ran: both members counted


async def test_a_lost_connection_is_reported_then_refused_until_reconnected(
    wire: RedisWire, server: RedisServer, lost: list[str]
) -> None:
    server.kill()
    with pytest.raises(BackendUnavailable):
        async with asyncio.timeout(3):
            while True:  # the loss is noticed when the socket closes
                await (await wire.submit("PING"))
                await asyncio.sleep(0.01)
    assert len(lost) == 1
    with pytest.raises(BackendUnavailable):  # refused at once: nothing queues while down
        await wire.submit("PING")
    wire.close("down")
    server.start()  # the same port, empty: no scripts, no keys
    await wire.connect()  # what the supervisor does once Redis answers
    wire.open()
    assert await (await wire.submit("PING")) == b"PONG"
    assert len(lost) == 1
