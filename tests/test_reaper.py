"""The reaper against a real redis-server: it removes a dead node's peers, never a live one's."""

from __future__ import annotations

import uuid

from app.backends.rediswire import scripts
from app.backends.rediswire.keys import Keys
from app.backends.single import client_from_url
from app.core import envelope
from tests.support.procs import RedisServer
from workers.reaper import reaper_for


async def test_reaper_leaves_a_node_alone_once_its_liveness_key_is_back(
    redis_server: RedisServer,
) -> None:
    keys = Keys(f"reap{uuid.uuid4().hex[:6]}:")
    client = client_from_url(redis_server.url)
    try:
        await scripts.load_all(client)
        joined = envelope.join("n1", "p", "c1", False)
        await client.evalsha(scripts.JOIN.sha, 6, keys.room_peers("r"), keys.room_conns("r"),
                             keys.rooms, keys.node_peers("n1"), keys.events,
                             keys.room_resume("r"), "r", "p", "n1/c1",
                             keys.room_channel("r"), joined, joined, 0,
                             *keys.node_peers_parts(), 0, "", keys.backlog("r", "p"))
        reaper = reaper_for(client, keys)
        await client.set(keys.node("n1"), b"{}")  # the node is (back) alive: hands off
        assert await reaper.reap("n1") == 0
        assert await client.smembers(keys.room_peers("r")) == {b"p"}
        await client.delete(keys.node("n1"))  # dead: its membership goes, announced once
        assert await reaper.sweep() == 1
        assert await reaper.sweep() == 0
        assert await client.exists(keys.room_peers("r"), keys.node_peers("n1"), keys.rooms) == 0
    finally:
        await client.aclose()
