"""What every Redis form of the backend shares: liveness, loss, reconnection, repair.

Work is split over tasks the backend owns:
- the heartbeat: refreshes `sig:node:{N}` (a TTL key) so the cluster knows the node lives;
- the supervisor: after a loss, reconnects with capped, jittered backoff, resubscribes,
  lets the node repair its memberships (`on_recovered`), and only then reports ready;
- pub/sub readers (one per Redis server the node listens to): a reader that ends means the
  connection is gone, which is a loss like any other.

Subclasses say how to connect (`_connect`) and how to refuse commands while lost
(`_drop`): `RedisBackend` for one Redis (or Sentinel's master), `ClusterBackend` for the
masters of a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from abc import abstractmethod
from collections.abc import Coroutine
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisClusterException, RedisError

from app.backends.rediswire.clients import AnyRedis
from app.backends.rediswire.connect import LOST
from app.backends.rediswire.directory import RedisDirectory
from app.backends.rediswire.keys import Keys
from app.backends.rediswire.reaping import Reaper
from app.backends.rediswire.subscriber import Subscriber
from app.core.ports import Backend, BackendEvents, BackendUnavailable

log = structlog.get_logger(__name__)

BACKOFF_FIRST, BACKOFF_CAP = 0.05, 2.0
# What reaching Redis can raise; all of it means "not now", never a crash.
FAILURES = (RedisError, RedisClusterException, BackendUnavailable, *LOST)


class SupervisedBackend(Backend):
    def __init__(self, plain: AnyRedis, node_id: str, keys: Keys, node_ttl: float,
                 reaper: Reaper, grace: float = 0.0) -> None:
        self.node_id = node_id
        self.keys = keys
        self.directory = RedisDirectory(plain, keys)
        self._plain = plain  # reads and the heartbeat: routed by key, retries are harmless
        self._node_ttl = node_ttl
        self._beat_every = min(1.0, node_ttl / 3)
        # Dead nodes are found within NODE_TTL (their key expires) plus one sweep.
        self._sweep_every = node_ttl / 2
        self._reaper = reaper
        self._grace = grace  # RESUME_SECONDS: a dead node's peers may still resume
        self._channels: dict[bytes, str] = {}
        self._events: BackendEvents | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._up = False
        self._lost = asyncio.Event()
        self._losses = 0  # losses signalled so far: tells a reader's late end from a new one
        self._started = time.time()

    @abstractmethod
    async def _connect(self) -> None:
        """Scripts, liveness key (`_beat(claim=True)`), pub/sub with every channel, pipes."""

    @abstractmethod
    def _drop(self, reason: str) -> None:
        """Refuse commands from now on and fail the queued ones."""

    @abstractmethod
    async def _close(self) -> None:
        """Close every connection (the liveness key is already gone)."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, events: BackendEvents) -> None:
        """Connect; if Redis is not there yet, start anyway (not ready) and keep trying."""
        self._events = events
        try:
            await self._connect()
            self._up = True
        except FAILURES as exc:
            log.warning("redis unreachable at start; retrying", error=repr(exc))
            self._drop("redis is unreachable")
            self._lost.set()
        self._spawn(self._heartbeat(), "redis-heartbeat")
        self._spawn(self._supervise(), "redis-supervisor")
        self._spawn(self._sweep(), "redis-sweeper")

    async def stop(self, held_since: float | None = None) -> None:
        up, self._up = self._up, False
        for task in [*self._tasks, *self._readers]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(*FAILURES):
            async with asyncio.timeout(2):
                await self._plain.delete(self.keys.node(self.node_id))
                if not await self._plain.exists(self.keys.node_peers(self.node_id)):
                    await self._plain.delete(self.keys.node_seen(self.node_id))
                elif up and held_since is not None and self._grace > 0:
                    await self._plain.set(self.keys.node_seen(self.node_id), str(held_since),
                                          px=int((self._grace + 5) * 1000))
        await self._close()

    @property
    def ready(self) -> bool:
        return self._up

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks = [t for t in self._tasks if not t.done()]  # pipes of retired masters
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self.observer.backend_error(task.get_name())
            log.error("backend task died; node is not ready", task=task.get_name(),
                      error=repr(task.exception()))
            self._up = False

    def _read(self, subscriber: Subscriber, name: str) -> asyncio.Task[None]:
        """Run a pub/sub reader; its end (other than cancellation) is a loss."""
        task = asyncio.create_task(subscriber.run(), name=name)
        losses = self._losses
        task.add_done_callback(lambda t: self._reader_done(t, losses))
        self._readers.add(task)
        return task

    def _reader_done(self, task: asyncio.Task[None], losses: int) -> None:
        self._readers.discard(task)
        if task.cancelled():
            return
        self.observer.backend_error("pubsub")
        if losses != self._losses:
            # Its connection ended with a loss already signalled (the reader only noticed
            # later): that loss is being repaired, and a second signal would make the
            # supervisor repair everything twice.
            return
        self._signal_lost(f"pub/sub connection: {task.exception()!r}")

    # -- loss and recovery -----------------------------------------------------------------

    def _signal_lost(self, reason: str, broken: bool = True) -> None:
        """Any part that sees Redis fail calls this; the supervisor takes it from there."""
        if self._up:
            log.warning("redis lost; node not ready until it is back", reason=reason)
            self._up = False
            if self._events is not None:
                self._events.on_lost()
        self._losses += 1
        self._drop(reason)
        if broken:
            for reader in list(self._readers):
                reader.cancel()  # fresh pub/sub connections will be made
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
                self.observer.backend_reconnected()
                log.info("redis connection restored; memberships repaired")

    async def _recover(self) -> bool:
        try:
            await self._connect()
            assert self._events is not None
            await self._events.on_recovered()
            return True
        except FAILURES as exc:
            log.debug("redis still unreachable", error=repr(exc))
            self._drop("redis is unreachable")
            return False

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._beat_every)
            if not self._up:
                continue
            try:
                kept = await self._beat(claim=False)
            except FAILURES as exc:
                self.observer.backend_error("heartbeat")
                self._signal_lost(f"heartbeat: {exc!r}")
                continue
            if not kept:  # expired (this node was reaped) or Redis restarted empty
                self._signal_lost("liveness key was gone", broken=False)

    async def _sweep(self) -> None:
        """Reap dead nodes, as `workers.reaper` would: every node does, so a cluster needs
        no extra process; the scripts make sure each lost peer is announced once."""
        delay = self._sweep_every
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = self._sweep_every
            if not self._up:
                continue
            try:
                await self._reaper.sweep(skip=self.node_id)
            except FAILURES as exc:
                log.warning("sweep for dead nodes failed", error=repr(exc))
            if self._reaper.next_due is not None:  # a grace ends sooner: sweep right then
                delay = min(delay, max(0.05, self._reaper.next_due - time.time()) + 0.1)

    async def _beat(self, claim: bool) -> bool:
        """Refresh the liveness key; without `claim`, only if it still exists."""
        info = {"node": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
                "started": round(self._started, 3)}
        async with asyncio.timeout(max(0.5, self._beat_every)):
            done = await self._plain.set(self.keys.node(self.node_id), orjson.dumps(info),
                                         px=int(self._node_ttl * 1000), xx=not claim)
            if done and self._grace > 0:  # where a sweeper counts this node's grace from
                await self._plain.set(self.keys.node_seen(self.node_id), str(time.time()),
                                      px=int((self._node_ttl + self._grace + 5) * 1000))
        return bool(done)

    # -- pub/sub and the node index --------------------------------------------------------

    def _on_message(self, channel: bytes, payload: bytes) -> None:
        room = self._channels.get(channel)
        if room is not None and self._events is not None:
            self._events.on_envelope(room, payload)

    def _owner(self, conn: str) -> str:
        return f"{self.node_id}/{conn}"

    async def memberships(self) -> set[tuple[str, str, str]]:
        raw = await self._plain.smembers(self.keys.node_peers(self.node_id))
        entries = [e.decode() if isinstance(e, bytes) else e for e in raw]
        pairs = [e.split("/", 1) for e in entries if "/" in e]
        async with self._plain.pipeline(transaction=False) as pipe:
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
