"""Redis backend: membership in sets, envelopes on per-room pub/sub channels (contract §2).

Work is split over tasks this backend owns:
- the ordered pipe: every command that publishes (see `pipe.py`);
- the subscriber: one pub/sub connection for all rooms this node hosts;
- the heartbeat: refreshes `sig:node:{N}` (a TTL key) so the cluster knows the node lives;
- the supervisor: after a loss, reconnects with capped, jittered backoff, resubscribes,
  lets the node repair its memberships (`on_recovered`), and only then reports ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Coroutine
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app import envelope
from app.backend import scripts
from app.backend.base import Backend, BackendEvents, BackendUnavailable, Rejoin, RoomFull
from app.backend.directory import RedisDirectory
from app.backend.pipe import LOST, OrderedPipe
from app.backend.subscriber import Subscriber
from app.keys import Keys

log = structlog.get_logger(__name__)

BACKOFF_FIRST, BACKOFF_CAP = 0.05, 2.0


def client_from_url(url: str) -> Redis:
    """A client that never retries on its own: a blind retry could publish twice."""
    return Redis.from_url(url, protocol=2, retry=Retry(NoBackoff(), 0), socket_timeout=5,
                          socket_connect_timeout=2, decode_responses=False)


class RedisBackend(Backend):
    def __init__(self, client: Redis, node_id: str, keys: Keys, node_ttl: float = 4.0,
                 events_maxlen: int = 0) -> None:
        self.node_id = node_id
        self.keys = keys
        self.directory = RedisDirectory(client, keys)
        self.reconnects = 0
        self._client = client
        self._node_ttl = node_ttl
        self._beat_every = min(1.0, node_ttl / 3)
        self._events_maxlen = events_maxlen  # 0: append no room events (nobody consumes them)
        self._pipe = OrderedPipe(client, self._signal_lost,
                                 on_error=lambda: self.observer.backend_error("command"))
        self._subscriber: Subscriber | None = None
        self._reader: asyncio.Task[None] | None = None
        self._channels: dict[bytes, str] = {}
        self._events: BackendEvents | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        self._lost = asyncio.Event()
        self._started = time.time()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, events: BackendEvents) -> None:
        """Connect; if Redis is not there yet, start anyway (not ready) and keep trying."""
        self._events = events
        try:
            await self._connect()
            self._up = True
        except (RedisError, BackendUnavailable, *LOST) as exc:
            log.warning("redis unreachable at start; retrying", error=repr(exc))
            self._lost.set()
        self._spawn(self._pipe.run(), "redis-pipe")
        self._spawn(self._heartbeat(), "redis-heartbeat")
        self._spawn(self._supervise(), "redis-supervisor")

    async def stop(self) -> None:
        self._up = False
        for task in [*self._tasks, *([self._reader] if self._reader else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError, *LOST):
            async with asyncio.timeout(2):
                await self._client.delete(self.keys.node(self.node_id))
        if self._subscriber is not None:
            await self._subscriber.close()
        await self._client.aclose()

    @property
    def ready(self) -> bool:
        return self._up

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self.observer.backend_error(task.get_name())
            log.error("backend task died; node is not ready", task=task.get_name(),
                      error=repr(task.exception()))
            self._up = False

    # -- connection, loss and recovery -----------------------------------------------------

    async def _connect(self) -> None:
        """Scripts, liveness key, pub/sub connection with every room resubscribed."""
        await scripts.load_all(self._client)
        await self._beat(claim=True)
        if self._reader is None or self._reader.done():
            subscriber = Subscriber(self._client.connection_pool, self._on_message)
            await subscriber.connect()
            self._subscriber = subscriber
            self._reader = asyncio.create_task(subscriber.run(), name="redis-subscriber")
            self._reader.add_done_callback(self._reader_done)
            await subscriber.subscribe(list(self._channels))
        self._pipe.open()

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self.observer.backend_error("pubsub")
            self._signal_lost(f"pub/sub connection: {task.exception()!r}")

    def _signal_lost(self, reason: str, broken: bool = True) -> None:
        """Any part that sees Redis fail calls this; the supervisor takes it from there."""
        if self._up:
            log.warning("redis lost; node not ready until it is back", reason=reason)
            self._up = False
            if self._events is not None:
                self._events.on_lost()
        self._pipe.close(reason)
        if broken and self._reader is not None:
            self._reader.cancel()  # a fresh pub/sub connection will be made
        self._lost.set()

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            delay = BACKOFF_FIRST
            while not await self._recover():
                await asyncio.sleep(min(delay * random.uniform(0.5, 1.5), BACKOFF_CAP))
                delay = min(delay * 2, BACKOFF_CAP)
            if not self._lost.is_set():
                self._up = True
                self.reconnects += 1
                self.observer.backend_reconnected()
                log.info("redis connection restored; memberships repaired")

    async def _recover(self) -> bool:
        try:
            await self._connect()
            assert self._events is not None
            await self._events.on_recovered()
            return True
        except (RedisError, BackendUnavailable, *LOST) as exc:
            log.debug("redis still unreachable", error=repr(exc))
            self._pipe.close("redis is unreachable")
            return False

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._beat_every)
            if not self._up:
                continue
            try:
                kept = await self._beat(claim=False)
            except (RedisError, *LOST) as exc:
                self.observer.backend_error("heartbeat")
                self._signal_lost(f"heartbeat: {exc!r}")
                continue
            if not kept:  # expired (this node was reaped) or Redis restarted empty
                self._signal_lost("liveness key was gone", broken=False)

    async def _beat(self, claim: bool) -> bool:
        """Refresh the liveness key; without `claim`, only if it still exists."""
        info = {"node": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
                "started": round(self._started, 3)}
        async with asyncio.timeout(max(0.5, self._beat_every)):
            done = await self._client.set(self.keys.node(self.node_id), orjson.dumps(info),
                                          px=int(self._node_ttl * 1000), xx=not claim)
        return bool(done)

    # -- pub/sub ---------------------------------------------------------------------------

    def _on_message(self, channel: bytes, payload: bytes) -> None:
        room = self._channels.get(channel)
        if room is not None and self._events is not None:
            self._events.on_envelope(room, payload)

    async def subscribe(self, room: str) -> None:
        if not self._up or self._subscriber is None:
            raise BackendUnavailable("redis is unreachable")
        channel = self.keys.room_channel(room).encode()
        self._channels[channel] = room
        await self._subscriber.subscribe([channel])

    async def unsubscribe(self, room: str) -> None:
        channel = self.keys.room_channel(room).encode()
        if self._channels.pop(channel, None) is None or self._subscriber is None:
            return
        if self._up:
            await self._subscriber.unsubscribe(channel)

    # -- membership and publishing ---------------------------------------------------------

    def _room_keys(self, room: str) -> tuple[str, str, str, str, str]:
        k = self.keys
        return (k.room_peers(room), k.room_conns(room), k.rooms, k.node_peers(self.node_id),
                k.events)

    def _owner(self, conn: str) -> str:
        return f"{self.node_id}/{conn}"

    async def _script(self, script: scripts.Script, room: str, *args: Any) -> Any:
        future = await self._pipe.submit("EVALSHA", script.sha, 5, *self._room_keys(room),
                                         room, *args)
        return await future

    async def join(
        self, room: str, peer: str, conn: str, fresh: bytes, takeover: bytes, limit: int = 0
    ) -> list[str]:
        members = await self._script(
            scripts.JOIN, room, peer, self._owner(conn), self.keys.room_channel(room), fresh,
            takeover, limit, *self.keys.node_peers_parts(), self._events_maxlen)
        if members is None:
            raise RoomFull(room)
        return [m.decode() for m in members if m != peer.encode()]

    async def leave(
        self, room: str, peer: str, conn: str, envelope: bytes, announce_absent: bool = False
    ) -> bool:
        done = await self._script(scripts.LEAVE, room, peer, self._owner(conn),
                                  self.keys.room_channel(room), envelope, int(announce_absent),
                                  self._events_maxlen)
        return bool(done)

    async def rejoin(self, room: str, peer: str, conn: str, envelope: bytes) -> Rejoin:
        result = await self._script(scripts.REJOIN, room, peer, self._owner(conn),
                                    self.keys.room_channel(room), envelope,
                                    self._events_maxlen)
        return Rejoin(result.decode())

    async def sync(self, room: str) -> None:
        future = await self._pipe.submit(
            "EVALSHA", scripts.SYNC.sha, 1, self.keys.room_peers(room),
            self.keys.room_channel(room), envelope.sync_prefix(self.node_id))
        await future

    async def memberships(self) -> set[tuple[str, str, str]]:
        raw = await self._client.smembers(self.keys.node_peers(self.node_id))
        entries = [e.decode() if isinstance(e, bytes) else e for e in raw]
        pairs = [e.split("/", 1) for e in entries if "/" in e]
        async with self._client.pipeline(transaction=False) as pipe:
            for room, peer in pairs:
                pipe.hget(self.keys.room_conns(room), peer)
            owners: list[bytes | None] = await pipe.execute()
        prefix = f"{self.node_id}/"
        found = set()
        for (room, peer), owner in zip(pairs, owners, strict=True):
            text = (owner or b"").decode()
            if not text or text.startswith(prefix):  # another node's entry is not ours
                found.add((room, peer, text.removeprefix(prefix)))
        return found

    async def relay(self, room: str, to: str, envelope: bytes) -> asyncio.Future[bool]:
        future = await self._pipe.submit(
            "EVALSHA", scripts.RELAY.sha, 1, self.keys.room_peers(room),
            to, self.keys.room_channel(room), envelope,
        )
        return future

    async def publish(self, room: str, envelope: bytes) -> asyncio.Future[None]:
        future = await self._pipe.submit("PUBLISH", self.keys.room_channel(room), envelope)
        return future
