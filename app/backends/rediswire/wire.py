"""One ordered path for every command that publishes: a pipelined wire.

A pool of connections would reorder a sender's frames (two commands on two connections
race inside Redis). Here commands reach Redis in submission order on one connection, so
per-sender FIFO holds: `submit` returns a future for the reply, commands submitted during
one event-loop turn leave in one write, replies are matched to futures in order as they
arrive (hiredis parses), and several batches may be in flight at once. No task, timer or
pool checkout per command, which is where the node's CPU per relayed frame went
(bench/PROFILE.md).

While Redis is unreachable the wire is closed: `submit` fails at once instead of
queueing, so an outage of any length costs no memory. The backend's supervisor owns
reconnection: `connect` (re)opens the socket (`connect.py`: every REDIS_URL form),
`open` lets commands in, `close` drops everything in flight, and `run` reports a lost or
stalled connection through `on_lost`. In a Redis Cluster each master has its own wire; a
reply saying the slot lives elsewhere (MOVED, ASK, ...) counts as a loss, so the backend
reconnects with the new slot map instead of sending a room's commands down two paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis
import structlog
from redis.asyncio import Redis

from app.backends.rediswire import scripts
from app.backends.rediswire.connect import elsewhere, handshake, open_connection
from app.core.ports import BackendUnavailable

log = structlog.get_logger(__name__)

Pending = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class _Protocol(asyncio.Protocol):
    """One connection: writes packed commands, resolves futures from replies in order."""

    def __init__(self, wire: RedisWire) -> None:
        self.wire = wire
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        # Kept: asyncio.get_running_loop() costs a getpid() syscall each call (CPython 3.11
        # checks for a fork), and _send would pay it for every command.
        self.loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.wire.on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.wire.writable.clear()

    def resume_writing(self) -> None:
        self.wire.writable.set()


class RedisWire:
    def __init__(self, client: Redis, on_lost: Callable[[str], None],
                 on_error: Callable[[], None] = lambda: None, timeout: float = 2.0,
                 reload: Callable[[Redis], Awaitable[None]] = scripts.load_all) -> None:
        self._client = client  # where the address, credentials and scripts come from
        self._reload = reload  # loads the Lua scripts this wire's commands use
        self._on_lost = on_lost
        self._on_error = on_error  # counts failed commands (metrics)
        self._timeout = timeout
        self._proto: _Protocol | None = None
        self._open = False
        self._out: list[bytes] = []
        self._in_flight: deque[Pending] = deque()
        self._flush_at_turn_end = False
        self._last_progress = 0.0
        self._retries: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()

    def open(self) -> None:
        self._open = True

    def close(self, reason: str) -> None:
        """Refuse new commands and fail those in flight (Redis is gone)."""
        self._open = False
        self._drop(BackendUnavailable(reason))

    async def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; wait only while the socket's write buffer is full."""
        if not self.writable.is_set():
            await self.writable.wait()
        if not self._open or self._proto is None:
            raise BackendUnavailable("redis is unreachable")
        return self._send(args)

    def _send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self._proto is not None  # submit checked
        loop = self._proto.loop
        future: asyncio.Future[Any] = loop.create_future()
        if not self._in_flight:
            self._last_progress = time.monotonic()
        self._out.append(hiredis.pack_command(args))
        self._in_flight.append((args, future))
        if not self._flush_at_turn_end:
            self._flush_at_turn_end = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_at_turn_end = False
        transport = self._proto.transport if self._proto is not None else None
        # A socket Redis closed may still be attached until `run` notices: uvloop raises on
        # a write to it. The commands then fail with the connection (`_drop`).
        if transport is not None and not transport.is_closing() and self._out:
            transport.write(b"".join(self._out))
        self._out.clear()

    def on_reply(self, reply: Any) -> None:
        if not self._in_flight:
            return  # a reply to a command already failed by `close`
        args, future = self._in_flight.popleft()
        self._last_progress = time.monotonic()
        if isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith("NOSCRIPT"):
                self._retry_after_reload(args, future)
                return
            if elsewhere(str(reply)):
                self._on_lost(f"cluster slot is elsewhere: {reply}")
            self._on_error()
            log.error("redis command failed", command=str(args[0]), error=str(reply))
            reply = BackendUnavailable(f"redis: {reply}")
        if future.done():
            return
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    def _retry_after_reload(self, args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        """Redis restarted or SCRIPT FLUSH: reload, then send again. Only this rare path
        can reorder (the retried command goes after those submitted meanwhile)."""

        async def retry() -> None:
            try:
                await self._reload(self._client)
                again = await self.submit(*args)
                future.set_result(await again)
            except Exception as exc:
                if not future.done():
                    future.set_exception(BackendUnavailable(f"redis: {exc}"))

        log.warning("lua script missing in redis, reloading", command=str(args[0]))
        task = asyncio.get_running_loop().create_task(retry())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def aclose(self) -> None:
        """Refuse commands, drop the connection and wait (briefly) for its socket to close."""
        proto = self._proto
        self.close("node is stopping")
        if proto is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.lost), 1.0)

    async def connect(self) -> None:
        """Open the connection (AUTH, SELECT) unless it is up; the supervisor calls it."""
        if self._proto is not None and not self._proto.lost.done():
            return
        proto = _Protocol(self)
        async with asyncio.timeout(self._timeout):
            await open_connection(self._client.connection_pool, proto)
        self._proto = proto
        self.writable.set()
        try:
            async with asyncio.timeout(self._timeout):
                for command in handshake(self._client.connection_pool):
                    await self._send(command)
        except BaseException:
            self._drop(BackendUnavailable("redis handshake failed"))
            raise
        self._connected.set()

    async def run(self) -> None:
        """Watch each connection; a loss or stall of its own goes to `on_lost`."""
        try:
            while True:
                await self._connected.wait()
                proto = self._proto
                if proto is None:
                    continue
                await self._watch(proto)
                if self._proto is proto:  # not closed by the supervisor: lost or stalled
                    was_open = self._open
                    self._drop(BackendUnavailable("redis connection lost"))
                    if was_open:
                        self._on_error()
                        self._on_lost("publishing connection lost or stalled")
        finally:
            self._open = False
            self._drop(BackendUnavailable("node is stopping"))

    async def _watch(self, proto: _Protocol) -> None:
        """Return when `proto` is lost, replaced, or stalls with replies overdue."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await asyncio.shield(proto.lost)
                    return
            if self._proto is not proto:
                return  # dropped and replaced meanwhile
            if self._in_flight and time.monotonic() - self._last_progress > self._timeout:
                log.warning("redis replies overdue, dropping the connection")
                return

    def _drop(self, exc: Exception) -> None:
        self._connected.clear()
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        self._out.clear()
        while self._in_flight:
            _, future = self._in_flight.popleft()
            if not future.done():
                future.set_exception(exc)
        self.writable.set()  # wake waiting submitters: they fail fast while down
