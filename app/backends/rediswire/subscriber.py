"""The pub/sub connection to one Redis server, as an `asyncio.Protocol`.

redis-py's `PubSub` does not tell when a SUBSCRIBE has taken effect, and the service
must know (announce-after-subscribe). So this speaks the few pub/sub commands itself on a
raw connection (`connect.py`: every REDIS_URL form): each SUBSCRIBE/UNSUBSCRIBE waits for
its confirmation, which Redis sends in order on this connection once the change is live.
Messages are handed to the service straight from `data_received`: no task switch and no
timeout context per message, which is most of what a reader cost per relayed frame
(bench/PROFILE.md). Liveness is checked on a timer: a connection silent for `idle_probe`
seconds gets a PING, and one still silent after another `idle_probe` is dropped.

Sharded (a Redis Cluster master): SSUBSCRIBE/SUNSUBSCRIBE and `smessage`. One SSUBSCRIBE
may only name channels of one slot, so channels are sent grouped by slot. When a slot moves
to another master, Redis ends its subscriptions with a `sunsubscribe` nobody asked for: the
reader stops then (ChannelsMoved), which the backend treats as a loss and resubscribes
where the slot now lives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from itertools import groupby
from typing import Any, cast

import hiredis
import structlog
from redis.asyncio.connection import ConnectionPool
from redis.crc import key_slot

from app.backends.rediswire.connect import handshake, open_connection
from app.core.ports import BackendUnavailable

log = structlog.get_logger(__name__)

MessageHandler = Callable[[bytes, bytes], None]


class ChannelsMoved(ConnectionError):
    """The server ended subscriptions by itself: their slot moved to another master."""


class Subscriber(asyncio.Protocol):
    def __init__(self, pool: ConnectionPool, on_message: MessageHandler,
                 idle_probe: float = 2.0, sharded: bool = False, timeout: float = 5.0) -> None:
        self._pool = pool  # where the address and credentials come from
        self._timeout = timeout
        self._parser = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._lost: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] | None = None  # the socket is closed
        self._replies: deque[asyncio.Future[Any]] = deque()  # AUTH at connect
        self._heard = False
        self._on_message = on_message
        self._idle_probe = idle_probe
        self._sharded = sharded
        prefix = b"s" if sharded else b""
        self._sub, self._unsub = prefix + b"subscribe", prefix + b"unsubscribe"
        self._message = prefix + b"message"
        self._waiters: dict[tuple[bytes, bytes], deque[asyncio.Future[None]]] = {}

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        self._gone = loop.create_future()
        async with asyncio.timeout(self._timeout):
            await open_connection(self._pool, self)
            for command in handshake(self._pool, select=False):  # channels know no db
                await self._call(*command)

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

    async def subscribe(self, channels: Iterable[bytes]) -> None:
        """Subscribe and return once Redis confirmed every channel."""
        await self._command(self._sub, list(channels))

    async def unsubscribe(self, channel: bytes) -> None:
        await self._command(self._unsub, [channel])

    async def _command(self, kind: bytes, channels: list[bytes]) -> None:
        if not channels:
            return
        if not self.connected:
            raise BackendUnavailable("pub/sub connection is down")
        loop = asyncio.get_running_loop()
        waiters = []
        for channel in channels:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault((kind, channel), deque()).append(waiter)
            waiters.append(waiter)
        groups = ([list(g) for _, g in groupby(sorted(channels, key=key_slot), key=key_slot)]
                  if self._sharded else [channels])
        try:
            for group in groups:
                await self._write(kind.upper(), *group)
        except (OSError, ConnectionError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc
        await asyncio.gather(*waiters)

    def _dispatch(self, reply: object) -> None:
        if reply == b"PONG":  # the answer to a probe while no channel is subscribed
            return
        if not isinstance(reply, list) or len(reply) < 2:
            log.warning("unexpected pub/sub reply", reply=repr(reply)[:200])
            return
        kind, channel = reply[0], reply[1]
        if kind == self._message and len(reply) == 3:
            try:
                self._on_message(channel, reply[2])
            except Exception:
                log.exception("pub/sub message handler failed")
            return
        waiters = self._waiters.get((kind, channel))
        if not waiters and kind == self._unsub and self._sharded:
            raise ChannelsMoved(f"redis ended the subscription to {channel!r}: slot moved")
        if waiters:
            waiter = waiters.popleft()
            if not waiters:
                del self._waiters[(kind, channel)]
            if not waiter.done():
                waiter.set_result(None)

    def _fail_waiters(self, exc: Exception) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        self._waiters.clear()
