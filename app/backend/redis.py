"""Redis backend: membership in sets, envelopes on per-room pub/sub channels (contract §2).

Three connections' worth of work, each with one owner task:
- the ordered pipe: every command that publishes (see `pipe.py`);
- the subscriber: one pub/sub connection for all rooms this node hosts;
- the heartbeat: refreshes `sig:node:{N}` (a TTL key) so the cluster knows the node lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.backend import scripts
from app.backend.base import Backend, BackendUnavailable, EnvelopeHandler, RoomFull
from app.backend.pipe import OrderedPipe
from app.backend.pubsub_wire import PubSubWire
from app.backend.subscriber import Subscriber
from app.backend.wire import RedisWire
from app.keys import Keys

log = structlog.get_logger(__name__)


def client_from_url(url: str) -> Redis:
    """A client that never retries on its own: a blind retry could publish twice."""
    return Redis.from_url(
        url,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=5,
        socket_connect_timeout=2,
        decode_responses=False,
    )


class RedisBackend(Backend):
    def __init__(self, client: Redis, node_id: str, keys: Keys, node_ttl: float = 6.0) -> None:
        self.node_id = node_id
        self.keys = keys
        self._client = client
        self._node_ttl = node_ttl
        self._pipe: RedisWire | OrderedPipe = RedisWire.for_client(client) or OrderedPipe(client)
        # plain TCP / unix: protocol-based pub/sub reader (no task switch per message)
        pool = client.connection_pool
        self._subscriber: Subscriber | PubSubWire = (
            PubSubWire(pool, self._on_message)
            if RedisWire.for_client(client) else Subscriber(pool, self._on_message))
        self._channels: dict[bytes, str] = {}
        self._on_envelope: EnvelopeHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._alive = False
        self._started = time.time()

    async def start(self, on_envelope: EnvelopeHandler) -> None:
        self._on_envelope = on_envelope
        try:
            await scripts.load_all(self._client)
            await self._beat()
            await self._subscriber.connect()
            if isinstance(self._pipe, RedisWire):
                await self._pipe.connect()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"cannot reach redis: {exc}") from exc
        self._spawn(self._subscriber.run(), "redis-subscriber")
        self._spawn(self._pipe.run(), "redis-pipe")
        self._spawn(self._heartbeat(), "redis-heartbeat")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._alive = False
        with contextlib.suppress(RedisError, OSError):
            await self._client.delete(self.keys.node(self.node_id))
        await self._subscriber.close()
        await self._client.aclose()

    @property
    def ready(self) -> bool:
        return self._alive and all(not t.done() for t in self._tasks)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self._alive = False
        log.error("backend task stopped; node is not ready", task=task.get_name(),
                  error=repr(task.exception()))

    async def _heartbeat(self) -> None:
        interval = min(1.0, self._node_ttl / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._beat()
            except (RedisError, OSError) as exc:
                if self._alive:
                    log.warning("redis heartbeat failed", error=str(exc))
                self._alive = False

    async def _beat(self) -> None:
        info = {"node": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
                "started": round(self._started, 3)}
        await self._client.set(self.keys.node(self.node_id), orjson.dumps(info),
                               px=int(self._node_ttl * 1000))
        self._alive = True

    def _on_message(self, channel: bytes, payload: bytes) -> None:
        room = self._channels.get(channel)
        if room is not None and self._on_envelope is not None:
            self._on_envelope(room, payload)

    async def subscribe(self, room: str) -> None:
        channel = self.keys.room_channel(room).encode()
        self._channels[channel] = room
        await self._subscriber.subscribe(channel)

    async def unsubscribe(self, room: str) -> None:
        channel = self.keys.room_channel(room).encode()
        try:
            await self._subscriber.unsubscribe(channel)
        finally:
            self._channels.pop(channel, None)

    def _room_keys(self, room: str) -> tuple[str, str, str, str]:
        k = self.keys
        return k.room_peers(room), k.room_conns(room), k.rooms, k.node_peers(self.node_id)

    def _owner(self, conn: str) -> str:
        return f"{self.node_id}/{conn}"

    async def join(
        self, room: str, peer: str, conn: str, fresh: bytes, takeover: bytes, limit: int = 0
    ) -> list[str]:
        channel = self.keys.room_channel(room)
        future = await self._pipe.submit(
            "EVALSHA", scripts.JOIN.sha, 4, *self._room_keys(room),
            room, peer, self._owner(conn), channel, fresh, takeover, limit,
            *self.keys.node_peers_parts(),
        )
        members = await future
        if members is None:
            raise RoomFull(room)
        return [m.decode() for m in members if m != peer.encode()]

    async def leave(self, room: str, peer: str, conn: str, envelope: bytes) -> bool:
        channel = self.keys.room_channel(room)
        future = await self._pipe.submit(
            "EVALSHA", scripts.LEAVE.sha, 4, *self._room_keys(room),
            room, peer, self._owner(conn), channel, envelope,
        )
        return bool(await future)

    async def relay(self, room: str, to: str, envelope: bytes) -> asyncio.Future[bool]:
        future = await self._pipe.submit(
            "EVALSHA", scripts.RELAY.sha, 1, self.keys.room_peers(room),
            to, self.keys.room_channel(room), envelope,
        )
        return future

    async def publish(self, room: str, envelope: bytes) -> asyncio.Future[None]:
        future = await self._pipe.submit("PUBLISH", self.keys.room_channel(room), envelope)
        return future
