"""The pub/sub connection as an `asyncio.Protocol`, for plain TCP and Unix sockets.

Same contract as `Subscriber` (whose bookkeeping it inherits: confirmed subscriptions,
sharded mode, order), but messages are handed to the service straight from
`data_received`: no task switch and no timeout context per message, which is most of
what the reader cost per relayed frame (bench/PROFILE.md). Liveness is checked on a
timer instead: a connection silent for `idle_probe` seconds gets a PING, and one still
silent after another `idle_probe` is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio.connection import Connection, ConnectionPool, UnixDomainSocketConnection

from app.backends.rediswire.subscriber import MessageHandler, Subscriber
from app.core.ports import BackendUnavailable


def plain(pool: ConnectionPool) -> bool:
    """Does `pool` speak plain TCP or a Unix socket (no TLS, no Sentinel, no fake)?"""
    return pool.connection_class in (Connection, UnixDomainSocketConnection)


def subscriber_for(pool: ConnectionPool, on_message: MessageHandler,
                   sharded: bool = False) -> Subscriber:
    """The protocol reader where it can speak to the server, redis-py's otherwise."""
    kind = ProtocolSubscriber if plain(pool) else Subscriber
    return kind(pool, on_message, sharded=sharded)


class ProtocolSubscriber(Subscriber, asyncio.Protocol):
    def __init__(self, pool: ConnectionPool, on_message: MessageHandler,
                 idle_probe: float = 2.0, sharded: bool = False, timeout: float = 5.0) -> None:
        super().__init__(pool, on_message, idle_probe=idle_probe, sharded=sharded)
        self._kwargs = pool.connection_kwargs
        self._timeout = timeout
        self._parser = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._lost: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] | None = None  # the socket is closed
        self._replies: deque[asyncio.Future[Any]] = deque()  # AUTH at connect
        self._heard = False

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        self._gone = loop.create_future()
        kw = self._kwargs
        async with asyncio.timeout(self._timeout):
            if "path" in kw:
                await loop.create_unix_connection(lambda: self, kw["path"])
            else:
                await loop.create_connection(lambda: self, kw.get("host", "localhost"),
                                             kw.get("port", 6379))
            if kw.get("password"):
                user = kw.get("username")
                await self._call("AUTH", *([user] if user else []), kw["password"])

    async def _call(self, *args: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(future)
        await self._write(*args)
        return await future

    async def _write(self, *args: bytes | str) -> None:
        if self._transport is None or self._transport.is_closing():
            raise BackendUnavailable("pub/sub connection is down")
        self._transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(ConnectionError(f"pub/sub connection lost: {exc!r}"))
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                if isinstance(reply, list) or not self._replies:
                    self._dispatch(reply)
                else:
                    future = self._replies.popleft()
                    if not future.done():
                        future.set_result(reply)
        except ConnectionError as exc:  # ChannelsMoved: the reader must stop
            self._end(exc)

    def _end(self, exc: Exception) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(exc)
            self._lost.exception()  # retrieved: `run` may already be gone
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self._fail_waiters(BackendUnavailable("pub/sub connection lost"))
        while self._replies:
            future = self._replies.popleft()
            if not future.done():
                future.set_exception(BackendUnavailable("pub/sub connection lost"))

    async def run(self) -> None:
        """Until the connection is lost (raises then), probing it when it is quiet."""
        lost = self._lost
        assert lost is not None
        probing = False
        try:
            while True:
                self._heard = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(lost), self._idle_probe)
                    return
                if self._heard:
                    probing = False
                elif probing:
                    raise ConnectionError("redis did not answer PING on pub/sub")
                else:
                    probing = True
                    await self._write("PING")
        finally:
            self._end(BackendUnavailable("pub/sub reader stopped"))

    async def close(self) -> None:
        """Close and wait (briefly) until the socket really is: nothing left to the GC."""
        self._end(BackendUnavailable("subscriber closed"))
        if self._gone is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._gone), 1.0)
