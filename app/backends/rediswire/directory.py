"""A read-only view of the cluster for operators: rooms, their peers, nodes.

Kept apart from `Backend` so that the signaling path stays narrow: the admin API and the
inspector read through a `Directory`, and nothing here changes state. Figures are a
snapshot of several reads, not one atomic picture; good enough to look at, not to decide
membership with. On a Redis Cluster (`RedisCluster` client) the same reads work: SCAN runs
on every master and cross-slot reads are pipelined per master.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from app.backends.rediswire.keys import Keys
from app.core.ports import BackendUnavailable, Directory, NodeInfo, PeerInfo

P = ParamSpec("P")
R = TypeVar("R")
Read = Callable[P, Coroutine[Any, Any, R]]


def _unavailable(read: Read[P, R]) -> Read[P, R]:
    """A Redis that cannot answer is the port's BackendUnavailable, not a redis-py error:
    callers (admin API) need not know which backend they read."""
    @functools.wraps(read)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await read(*args, **kwargs)
        except (RedisError, OSError) as e:
            raise BackendUnavailable(str(e)) from e
    return wrapper


class RedisDirectory(Directory):
    def __init__(self, client: Redis | RedisCluster, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    @_unavailable
    async def rooms(self) -> dict[str, int]:
        names = sorted(_text(m) for m in await self._client.smembers(self._keys.rooms))
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.scard(self._keys.room_peers(name))
            counts = await pipe.execute()
        return {name: int(n) for name, n in zip(names, counts, strict=True) if n}

    @_unavailable
    async def room(self, room: str) -> list[PeerInfo]:
        conns = await self._client.hgetall(self._keys.room_conns(room))
        return sorted((PeerInfo.from_owner(_text(p), _text(o)) for p, o in conns.items()),
                      key=lambda info: info.peer)

    @_unavailable
    async def nodes(self) -> list[NodeInfo]:
        head = f"{self._keys.prefix}node:{{"
        live = {_text(k)[len(head):-1] async for k in self._client.scan_iter(
            match=self._keys.node_pattern(), count=1000)}
        indexed = {_text(k)[len(head):-len("}:peers")] async for k in self._client.scan_iter(
            match=self._keys.node_peers_pattern(), count=1000)}
        names = sorted(live | indexed)
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(self._keys.node(name))
                pipe.scard(self._keys.node_peers(name))
            replies = await pipe.execute()
        return [NodeInfo(name, raw is not None, int(count), _details(raw))
                for name, raw, count in zip(names, replies[::2], replies[1::2], strict=True)]


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def _details(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
