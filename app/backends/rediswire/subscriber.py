"""A pub/sub connection to one Redis server, read by one task.

redis-py's `PubSub` does not tell when a SUBSCRIBE has taken effect, and the service
must know (announce-after-subscribe). So this speaks the few pub/sub commands itself on a
raw connection: each SUBSCRIBE/UNSUBSCRIBE waits for its confirmation, which Redis sends
in order on this connection once the change is live. A silent connection is probed with
PING, so a vanished server is noticed even when no room has traffic.

Sharded (a Redis Cluster master): SSUBSCRIBE/SUNSUBSCRIBE and `smessage`. One SSUBSCRIBE
may only name channels of one slot, so channels are sent grouped by slot. When a slot moves
to another master, Redis ends its subscriptions with a `sunsubscribe` nobody asked for: the
reader stops then (ChannelsMoved), which the backend treats as a loss and resubscribes
where the slot now lives.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from itertools import groupby

import structlog
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.crc import key_slot

from app.core.ports import BackendUnavailable

log = structlog.get_logger(__name__)

MessageHandler = Callable[[bytes, bytes], None]


class ChannelsMoved(ConnectionError):
    """The server ended subscriptions by itself: their slot moved to another master."""


class Subscriber:
    def __init__(self, pool: ConnectionPool, on_message: MessageHandler,
                 idle_probe: float = 2.0, sharded: bool = False) -> None:
        self._pool = pool
        self._on_message = on_message
        self._idle_probe = idle_probe
        self._sharded = sharded
        prefix = b"s" if sharded else b""
        self._sub, self._unsub = prefix + b"subscribe", prefix + b"unsubscribe"
        self._message = prefix + b"message"
        self._conn: AbstractConnection | None = None
        self._waiters: dict[tuple[bytes, bytes], deque[asyncio.Future[None]]] = {}

    async def connect(self) -> None:
        conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.disconnect()
        self._fail_waiters(BackendUnavailable("subscriber closed"))

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_connected

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

    async def _write(self, *args: bytes | str) -> None:
        assert self._conn is not None
        await self._conn.send_command(*args, check_health=False)

    async def run(self) -> None:
        """Read until the connection fails; every message goes to the handler in order."""
        conn = self._conn
        assert conn is not None
        probing = False
        try:
            while True:
                reply = await conn.read_response(timeout=self._idle_probe)
                if reply is None:  # quiet for a while: is the server still there?
                    if probing:
                        raise ConnectionError("redis did not answer PING on pub/sub")
                    probing = True
                    await conn.send_command("PING", check_health=False)
                    continue
                probing = False
                self._dispatch(reply)
        finally:
            self._fail_waiters(BackendUnavailable("pub/sub connection lost"))

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
