"""One ordered path for every command that publishes.

A pool of connections would reorder a sender's frames (two commands on two connections
race inside Redis). Here commands run in submission order: whatever queued up while one
round trip was in flight goes out as the next pipeline, on one connection at a time.
That keeps per-sender FIFO and batches under load for free.

While Redis is unreachable the pipe is closed: `submit` fails at once instead of queueing,
so an outage of any length costs no memory. In a Redis Cluster each master has its own pipe;
a reply saying the slot lives elsewhere (MOVED, ASK, ...) counts as a loss, so the backend
reconnects with the new slot map instead of sending a room's commands down two paths.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.backends.rediswire import scripts
from app.core.ports import BackendUnavailable

log = structlog.get_logger(__name__)

Command = tuple[tuple[Any, ...], "asyncio.Future[Any]"]
# uvloop raises RuntimeError ("the handler is closed") when redis-py writes to a socket that
# Redis already closed but whose end redis-py has not read yet: that too is a lost connection.
LOST = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, RuntimeError)
# Replies of a cluster whose slots moved or that is failing over: this server is not the one.
ELSEWHERE = (MovedError, AskError, TryAgainError, ClusterDownError)


class OrderedPipe:
    def __init__(self, client: Redis, on_lost: Callable[[str], None], timeout: float = 2.0,
                 max_batch: int = 1000, max_queued: int = 50_000,
                 on_error: Callable[[], None] = lambda: None,
                 reload: Callable[[Redis], Awaitable[None]] = scripts.load_all) -> None:
        self._client = client
        self._reload = reload  # loads the Lua scripts this pipe's commands use
        self._on_lost = on_lost
        self._on_error = on_error  # counts failed round trips and commands (metrics)
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._queue: deque[Command] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._open = False

    def open(self) -> None:
        self._open = True

    def close(self, reason: str) -> None:
        """Refuse new commands and fail the queued ones (Redis is gone)."""
        self._open = False
        _fail(list(self._queue), BackendUnavailable(reason))
        self._queue.clear()
        self._space.set()

    async def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; wait only if the queue is full. The future holds its reply."""
        while self._open and len(self._queue) >= self._max_queued:
            self._space.clear()
            await self._space.wait()
        if not self._open:
            raise BackendUnavailable("redis is unreachable")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        self._wake.set()
        return future

    async def run(self) -> None:
        """Send queued commands forever, in order; owned by the backend."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    count = min(len(self._queue), self._max_batch)
                    batch = [self._queue.popleft() for _ in range(count)]
                    if len(self._queue) < self._max_queued:
                        self._space.set()
                    await self._execute(batch)
        finally:
            self.close("node is stopping")

    async def _execute(self, batch: list[Command]) -> None:
        try:
            replies = await self._send(batch)
            if any(isinstance(r, NoScriptError) for r in replies):
                replies = await self._reload_and_retry(batch, replies)
        except LOST as exc:
            self._on_error()
            _fail(batch, BackendUnavailable(f"redis: {exc!r}"))
            self._on_lost(f"command failed: {exc!r}")
            return
        moved = next((r for r in replies if isinstance(r, ELSEWHERE)), None)
        if moved is not None:
            self._on_lost(f"cluster slot is elsewhere: {moved}")
        for (args, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                self._on_error()
                log.error("redis command failed", command=str(args[0]), error=str(reply))
                future.set_exception(BackendUnavailable(f"redis: {reply}"))
            else:
                future.set_result(reply)

    async def _reload_and_retry(self, batch: list[Command], replies: list[Any]) -> list[Any]:
        """Redis restarted or SCRIPT FLUSH: reload and run those commands again.

        Only this rare path can reorder, and only commands within one batch.
        """
        missing = [cmd for cmd, r in zip(batch, replies, strict=True)
                   if isinstance(r, NoScriptError)]
        log.warning("lua scripts missing in redis, reloading", commands=len(missing))
        await self._reload(self._client)
        retried = iter(await self._send(missing))
        return [next(retried) if isinstance(r, NoScriptError) else r for r in replies]

    async def _send(self, batch: list[Command]) -> list[Any]:
        async with asyncio.timeout(self._timeout), self._client.pipeline(
            transaction=False
        ) as pipe:
            for args, _ in batch:
                pipe.execute_command(*args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies


def _fail(batch: list[Command], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
