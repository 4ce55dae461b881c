"""The ordered publishing path without redis-py's per-call machinery: a pipelined wire.

Same contract as `OrderedPipe` (`submit` returns a future for the reply; commands reach
Redis in submission order on one connection, so per-sender FIFO holds), but built on an
`asyncio.Protocol` with hiredis: commands submitted during one event-loop turn leave in
one write, replies are matched to futures in order as they arrive, and several batches
may be in flight at once. No task, timer or pool checkout per command, which is where the
node's CPU per relayed frame went (bench/PROFILE.md).

It speaks plain TCP and Unix sockets (with AUTH and SELECT from the URL); `for_client`
returns None for anything else (TLS, fakeredis) and the backend keeps `OrderedPipe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, cast

import hiredis
import structlog
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from app.backend import scripts
from app.backend.base import BackendUnavailable

log = structlog.get_logger(__name__)

Pending = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


async def open_connection(kwargs: dict[str, Any], proto: asyncio.Protocol,
                          timeout: float) -> None:
    """Connect `proto` to the Redis that redis-py's connection kwargs describe."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if "path" in kwargs:
            await loop.create_unix_connection(lambda: proto, kwargs["path"])
        else:
            await loop.create_connection(lambda: proto, kwargs.get("host", "localhost"),
                                         kwargs.get("port", 6379))


class _Protocol(asyncio.Protocol):
    """One connection: writes packed commands, resolves futures from replies in order."""

    def __init__(self, wire: RedisWire) -> None:
        self.wire = wire
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        wire = self.wire
        while (reply := self.reader.gets()) is not False:
            wire.on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.wire.writable.clear()

    def resume_writing(self) -> None:
        self.wire.writable.set()


class RedisWire:
    def __init__(self, client: Redis, timeout: float = 5.0) -> None:
        self._client = client
        self._kwargs = client.connection_pool.connection_kwargs
        self._timeout = timeout
        self._proto: _Protocol | None = None
        self._out: list[bytes] = []
        self._in_flight: deque[Pending] = deque()
        self._flush_at_turn_end = False
        self._last_progress = 0.0
        self._retries: set[asyncio.Task[None]] = set()
        self.writable = asyncio.Event()

    @classmethod
    def for_client(cls, client: Redis) -> RedisWire | None:
        kind = client.connection_pool.connection_class
        return cls(client) if kind in (Connection, UnixDomainSocketConnection) else None

    async def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; wait only while the socket's write buffer is full."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self.writable.is_set():
            await self.writable.wait()
        if self._proto is None:
            future.set_exception(BackendUnavailable("redis connection is down"))
            return future
        if not self._in_flight:
            self._last_progress = time.monotonic()
        self._out.append(hiredis.pack_command(args))
        self._in_flight.append((args, future))
        if not self._flush_at_turn_end:
            self._flush_at_turn_end = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_at_turn_end = False
        if self._proto is not None and self._proto.transport is not None and self._out:
            self._proto.transport.write(b"".join(self._out))
        self._out.clear()

    def on_reply(self, reply: Any) -> None:
        args, future = self._in_flight.popleft()
        self._last_progress = time.monotonic()
        if isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith("NOSCRIPT"):
                self._retry_after_reload(args, future)
                return
            log.error("redis command failed", command=str(args[0]), error=str(reply))
            reply = BackendUnavailable(f"redis: {reply}")
        if future.done():
            return
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    def _retry_after_reload(self, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        # Redis restarted or SCRIPT FLUSH: reload, then send again. Only this rare path can
        # reorder (the retried command goes after those submitted meanwhile), as before.
        async def retry() -> None:
            try:
                await scripts.load_all(self._client)
                again = await self.submit(*args)
                future.set_result(await again)
            except Exception as exc:
                if not future.done():
                    future.set_exception(BackendUnavailable(f"redis: {exc}"))

        log.warning("lua script missing in redis, reloading", command=str(args[0]))
        task = asyncio.get_running_loop().create_task(retry())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def run(self) -> None:
        """Keep one connection up, forever; owned by the backend's task group."""
        delay = 0.05
        try:
            while True:
                try:
                    if self._proto is None:
                        await self.connect()
                except (OSError, TimeoutError, BackendUnavailable) as exc:
                    log.warning("redis wire cannot connect", error=str(exc))
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 2)
                    continue
                delay = 0.05
                await self._watch()
                self._drop(BackendUnavailable("redis connection lost"))
        finally:
            self._drop(BackendUnavailable("node is stopping"))

    async def connect(self) -> None:
        """Open the connection (AUTH, SELECT); `start` calls it so that a node is ready
        only once its wire is up, and `run` calls it again after each loss."""
        proto = _Protocol(self)
        await open_connection(self._kwargs, proto, self._timeout)
        self._proto = proto
        self.writable.set()
        hello = []
        if self._kwargs.get("password"):
            user = self._kwargs.get("username")
            hello.append(("AUTH", user, self._kwargs["password"]) if user
                         else ("AUTH", self._kwargs["password"]))
        if self._kwargs.get("db"):
            hello.append(("SELECT", self._kwargs["db"]))
        try:
            async with asyncio.timeout(self._timeout):
                for command in hello:
                    await (await self.submit(*command))
        except BaseException:
            self._drop(BackendUnavailable("redis handshake failed"))
            raise

    async def _watch(self) -> None:
        """Wait until the connection is lost, or stalls with replies overdue."""
        assert self._proto is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._proto.lost)
                    return
            stalled = time.monotonic() - self._last_progress > self._timeout
            if self._in_flight and stalled:
                log.warning("redis replies overdue, dropping the connection")
                return

    def _drop(self, exc: Exception) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        self._out.clear()
        while self._in_flight:
            _, future = self._in_flight.popleft()
            if not future.done():
                future.set_exception(exc)
        self.writable.set()  # wake waiting submitters: they fail fast while down
