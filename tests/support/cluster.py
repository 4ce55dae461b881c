"""Two or more signaling nodes behind one backend, in whichever form a test asks for.

- memory: in-process nodes sharing one `MemoryHub`;
- fakeredis: in-process nodes on the Redis backend, on fakeredis's TCP server (`TcpFakeServer`);
- redis: in-process nodes on a real redis-server (started by the tests);
- processes: `python -m app` processes on a real redis-server;
- rediscluster: `python -m app` processes on a real Redis Cluster of 3 masters.

Each exposes node URLs and, where there is a Redis, a way to inspect it, so one behaviour
suite runs unchanged against all four.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.backends import MemoryBackend, MemoryHub
from app.backends.rediswire.keys import Keys
from app.config.settings import Settings
from app.core.ports import Backend
from app.node import create_app

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
NodeFactory = Callable[..., Awaitable[str]]  # the `make_node` fixture: settings -> node URL


@dataclass
class Cluster:
    kind: str
    urls: list[str]
    keys: Keys
    redis: Redis | RedisCluster | None = None
    hub: MemoryHub | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stops: list[Callable[[], None]] = field(default_factory=list)  # servers the form started

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        for stop in self.stops:
            stop()

    async def node_peers(self, node: str) -> set[str]:
        """The `room/peer` memberships the backend files under `node`."""
        if self.hub is not None:
            return set(self.hub.node_peers.get(node, ()))
        assert self.redis is not None
        return {m.decode() for m in await self.redis.smembers(self.keys.node_peers(node))}

    async def room_state(self, room: str) -> dict[str, Any]:
        """What the backend holds for `room`: members, owner conns, listed, subscribers."""
        if self.hub is not None:
            members = self.hub.members.get(room, {})
            return {"peers": sorted(members), "conns": dict(members),
                    "listed": room in self.hub.members,
                    "subscribers": len(self.hub.subscribers.get(room, ())),
                    "keys": []}
        assert self.redis is not None
        r, k = self.redis, self.keys
        peers = sorted(p.decode() for p in await r.smembers(k.room_peers(room)))
        conns = {a.decode(): b.decode() for a, b in (await r.hgetall(k.room_conns(room))).items()}
        pattern = f"{k.prefix}room:{{{room}}}*"
        if isinstance(r, RedisCluster):  # every key of the room is on its slot's master
            master = r.get_node_from_key(k.room_channel(room))
            numsub = await r.execute_command("PUBSUB SHARDNUMSUB", k.room_channel(room),
                                             target_nodes=master)
            found = await r.keys(pattern, target_nodes=master)
        else:
            numsub, found = await r.pubsub_numsub(k.room_channel(room)), await r.keys(pattern)
        keys = [x.decode() for x in found]
        return {"peers": peers, "conns": conns, "subscribers": int(numsub[0][1]),
                "listed": bool(await r.sismember(k.rooms, room)), "keys": keys}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


ADMIN_TOKEN = "test-admin-token-0123456789abcdef"  # every test node's admin API answers to this


def node_settings(i: int, **kw: Any) -> Settings:
    base: dict[str, Any] = {"node_id": f"node{i}-{uuid.uuid4().hex[:4]}", "host": "127.0.0.1",
                            "ws_heartbeat_seconds": 0.0, "node_ttl_seconds": 6.0,
                            "admin_token": ADMIN_TOKEN}
    base.update(kw)
    return Settings(**base)


async def in_process(kind: str, n: int, start: ServerFactory, redis_url: str | None,
                     **settings: Any) -> Cluster:
    """Start `n` in-process nodes of `kind` (memory, fakeredis or redis)."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    keys = Keys(prefix)
    hub: MemoryHub | None = None
    redis: Redis | RedisCluster | None = None
    factory: Callable[[Settings], Backend]
    stops: list[Callable[[], None]] = []
    if kind == "memory":
        shared = hub = MemoryHub()

        def factory(s: Settings) -> Backend:
            return MemoryBackend(s.node_id, shared)
    elif kind in ("fakeredis", "redis"):  # any REDIS_URL form: one Redis, Sentinel, a Cluster
        from app.backends import create_backend
        from app.backends.rediswire.clients import plain_client

        if kind == "fakeredis":  # fakeredis's engine behind a socket: the node's own wire
            redis_url, stop = fake_redis_server()
            stops.append(stop)
        assert redis_url is not None
        redis = plain_client(redis_url)
        factory = create_backend
        settings = {"redis_url": redis_url, **settings}
    else:
        raise ValueError(kind)
    urls, apps = [], []
    for i in range(n):
        app = create_app(node_settings(i, key_prefix=prefix, **settings), factory)
        server = await start(app)
        urls.append(str(server.make_url("")).rstrip("/"))
        apps.append(app)
    return Cluster(kind, urls, keys, redis=redis, hub=hub,
                   extra={"apps": apps, "url": redis_url}, stops=stops)


def fake_redis_server() -> tuple[str, Callable[[], None]]:
    """fakeredis's TCP server on a free port, in a thread: its URL, and how to stop it."""
    import fakeredis

    server = fakeredis.TcpFakeServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)
    return f"redis://127.0.0.1:{server.server_address[1]}/0", stop


async def publish_raw(c: Cluster, room: str, payload: bytes) -> None:
    """Put arbitrary bytes on a room's channel, as a buggy or hostile publisher would."""
    if c.hub is not None:
        c.hub.publish(room, payload)
    elif isinstance(c.redis, RedisCluster):
        await c.redis.spublish(c.keys.room_channel(room), payload)
    else:
        assert c.redis is not None
        await c.redis.publish(c.keys.room_channel(room), payload)
