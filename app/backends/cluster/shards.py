"""The masters of a Redis Cluster as a node uses them: one ordered pipe and, when needed,
one sharded pub/sub connection per master.

Per-sender order needs one ordered path per room. A room's commands all go to the master
of its slot, through that master's one pipe, so they keep their order. The slot map is a
snapshot taken when the backend (re)connects, not redis-py's live cache: routing changes
only while every pipe is closed (a loss), so a room's commands never run down two paths.
A master answering MOVED/ASK, a `sunsubscribe` pushed by Redis (the slot moved) or a lost
connection is a loss; reconnecting takes a new snapshot and resubscribes where each room's
slot now lives.

A pub/sub connection is opened on a master only when this node hosts a room of its slots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from app.backends.cluster import scripts as cluster_scripts
from app.backends.rediswire.subscriber import MessageHandler, Subscriber
from app.backends.rediswire.wire import RedisWire
from app.core.ports import BackendUnavailable

Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


@dataclass(eq=False)
class Shard:
    name: str  # host:port of the master
    client: Redis
    pipe: RedisWire
    runner: asyncio.Task[None]
    subscriber: Subscriber | None = None
    reader: asyncio.Task[None] | None = None
    channels: set[bytes] = field(default_factory=set)  # confirmed on `subscriber`
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def listening(self) -> bool:
        return self.reader is not None and not self.reader.done()


@dataclass
class ShardHooks:
    """What the shards need from the backend that owns them."""

    client: Callable[[str, int], Redis]  # a client for one master
    spawn: Spawn  # owns pipe runners (a dying runner makes the node unready)
    read: Callable[[Subscriber, str], asyncio.Task[None]]  # owns readers (an end is a loss)
    on_lost: Callable[[str], None]
    on_error: Callable[[], None]
    on_message: MessageHandler


class ShardSet:
    def __init__(self, cluster: RedisCluster, hooks: ShardHooks) -> None:
        self._cluster = cluster
        self._hooks = hooks
        self._shards: dict[str, Shard] = {}
        self._slots: list[str] = []  # slot -> master name, as of the last refresh

    def __iter__(self) -> Iterator[Shard]:
        return iter(list(self._shards.values()))

    async def refresh(self) -> None:
        """Read the slot map again, open pipes to new masters, retire old ones, and load
        the scripts on every master. Call only while the pipes are closed."""
        await self._cluster.initialize()  # once: commands parser, first slot map
        await self._cluster.nodes_manager.initialize()  # every time: the current slot map
        cache = self._cluster.nodes_manager.slots_cache
        slots = [cache[slot][0].name if cache.get(slot) else "" for slot in range(16384)]
        masters = {node.name: node for node in self._cluster.get_primaries()}
        for name in set(self._shards) - set(masters):
            await self._retire(self._shards.pop(name))
        for name, node in masters.items():
            if name not in self._shards:
                self._shards[name] = self._open(name, node.host, int(node.port))
            await cluster_scripts.load_all(self._shards[name].client)
        self._slots = slots

    def _open(self, name: str, host: str, port: int) -> Shard:
        h = self._hooks
        client = h.client(host, port)
        pipe = RedisWire(client, h.on_lost, on_error=h.on_error, reload=cluster_scripts.load_all)
        return Shard(name, client, pipe, h.spawn(pipe.run(), f"redis-pipe {name}"))

    async def _retire(self, shard: Shard) -> None:
        await shard.pipe.aclose()
        for task in (shard.runner, shard.reader):
            if task is not None:
                task.cancel()
        await self._close_subscriber(shard)
        with contextlib.suppress(Exception):
            await shard.client.aclose()

    def for_key(self, key: str | bytes) -> Shard:
        """The master of `key`'s slot, as of the last refresh."""
        raw = key.encode() if isinstance(key, str) else key
        shard = self._shards.get(self._slots[key_slot(raw)]) if self._slots else None
        if shard is None:
            raise BackendUnavailable(f"no master known for the slot of {raw!r}")
        return shard

    async def open_pipes(self) -> None:
        """Connect each master's wire (unless it is up) and let commands in."""
        for shard in self._shards.values():
            await shard.pipe.connect()
            shard.pipe.open()

    def close_pipes(self, reason: str) -> None:
        for shard in self._shards.values():
            shard.pipe.close(reason)

    # -- sharded pub/sub -------------------------------------------------------------------

    async def resubscribe(self, channels: Iterable[bytes]) -> None:
        """Make each master's subscriptions exactly the channels of its slots: keep a live
        connection that already has them, otherwise open a fresh one."""
        wanted: dict[str, set[bytes]] = {name: set() for name in self._shards}
        for channel in channels:
            wanted[self.for_key(channel).name].add(channel)
        for name, shard in self._shards.items():
            async with shard.lock:
                if shard.listening() and shard.channels == wanted[name]:
                    continue
                await self._close_subscriber(shard)
                if wanted[name]:
                    await self._listen(shard)
                    await self._confirm(shard, wanted[name])

    async def subscribe(self, channel: bytes) -> None:
        shard = self.for_key(channel)
        async with shard.lock:
            if not shard.listening():
                await self._close_subscriber(shard)
                await self._listen(shard)
            await self._confirm(shard, {channel})

    async def unsubscribe(self, channel: bytes) -> None:
        shard = self.for_key(channel)
        async with shard.lock:
            if shard.subscriber is not None and channel in shard.channels:
                shard.channels.discard(channel)
                await shard.subscriber.unsubscribe(channel)

    async def _listen(self, shard: Shard) -> None:
        subscriber = Subscriber(shard.client.connection_pool, self._hooks.on_message,
                                sharded=True)
        try:
            await subscriber.connect()
        except OSError as exc:  # redis-py's ConnectionError is an OSError too
            raise BackendUnavailable(f"pub/sub on {shard.name}: {exc}") from exc
        shard.subscriber = subscriber
        shard.reader = self._hooks.read(subscriber, f"redis-subscriber {shard.name}")

    async def _confirm(self, shard: Shard, channels: set[bytes]) -> None:
        assert shard.subscriber is not None
        await shard.subscriber.subscribe(sorted(channels))
        shard.channels |= channels

    async def _close_subscriber(self, shard: Shard) -> None:
        if shard.reader is not None:
            shard.reader.cancel()
        if shard.subscriber is not None:
            with contextlib.suppress(Exception):
                await shard.subscriber.close()
        shard.subscriber, shard.reader = None, None
        shard.channels = set()

    async def close(self) -> None:
        for shard in list(self._shards.values()):
            await self._retire(shard)
        self._shards.clear()
        self._slots = []
