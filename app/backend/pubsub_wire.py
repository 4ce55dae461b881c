"""The node's pub/sub connection as an `asyncio.Protocol`: messages are handed to the
service straight from `data_received`, with no task switch per message (bench/PROFILE.md).

Same contract as `Subscriber`, whose bookkeeping it reuses: one connection,
`subscribe`/`unsubscribe` return once Redis confirmed them (announce-after-subscribe),
messages reach the handler in order, and `run` returns, failing every waiter, when the
connection is lost. Used for plain TCP and unix URLs, like `RedisWire`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio.connection import ConnectionPool

from app.backend.base import BackendUnavailable
from app.backend.subscriber import MessageHandler, Subscriber
from app.backend.wire import open_connection


class PubSubWire(Subscriber, asyncio.Protocol):
    def __init__(self, pool: ConnectionPool, on_message: MessageHandler,
                 timeout: float = 5.0) -> None:
        super().__init__(pool, on_message)
        self._kwargs = pool.connection_kwargs
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._lost: asyncio.Future[None] | None = None
        self._replies: deque[asyncio.Future[Any]] = deque()  # AUTH at connect

    async def connect(self) -> None:
        self._lost = asyncio.get_running_loop().create_future()
        await open_connection(self._kwargs, self, self._timeout)
        password = self._kwargs.get("password")
        if password:
            user = self._kwargs.get("username")
            async with asyncio.timeout(self._timeout):
                await self._plain("AUTH", *([user] if user else []), password)

    async def _plain(self, *args: Any) -> Any:
        assert self._transport is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(future)
        self._transport.write(hiredis.pack_command(args))
        return await future

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._fail(BackendUnavailable("pub/sub connection lost"))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if isinstance(reply, list):
                self._dispatch(reply)
            elif self._replies:
                future = self._replies.popleft()
                if not future.done():
                    future.set_result(reply)

    async def _command(self, kind: bytes, channel: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise BackendUnavailable("pub/sub connection is down")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((kind, channel), deque()).append(waiter)
        self._transport.write(hiredis.pack_command((kind.upper(), channel)))  # type: ignore[arg-type]
        await waiter

    async def run(self) -> None:
        """Wait until the connection is lost (owned by the backend's task group)."""
        assert self._lost is not None
        try:
            await self._lost
        finally:
            self._fail(BackendUnavailable("pub/sub connection lost"))

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(BackendUnavailable("subscriber closed"))

    def _fail(self, exc: Exception) -> None:
        self._fail_waiters(exc)
        while self._replies:
            future = self._replies.popleft()
            if not future.done():
                future.set_exception(exc)
