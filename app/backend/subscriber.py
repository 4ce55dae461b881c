"""The node's single pub/sub connection, read by one task.

redis-py's `PubSub` does not tell when a SUBSCRIBE has taken effect, and the service
must know (announce-after-subscribe). So this speaks the few pub/sub commands itself on a
raw connection: each SUBSCRIBE/UNSUBSCRIBE waits for its confirmation, which Redis sends
in order on this connection once the change is live.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

import structlog
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from app.backend.base import BackendUnavailable

log = structlog.get_logger(__name__)

MessageHandler = Callable[[bytes, bytes], None]


class Subscriber:
    def __init__(self, pool: ConnectionPool, on_message: MessageHandler) -> None:
        self._pool = pool
        self._on_message = on_message
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

    async def subscribe(self, channel: bytes) -> None:
        await self._command(b"subscribe", channel)

    async def unsubscribe(self, channel: bytes) -> None:
        await self._command(b"unsubscribe", channel)

    async def _command(self, kind: bytes, channel: bytes) -> None:
        if self._conn is None or not self._conn.is_connected:
            raise BackendUnavailable("pub/sub connection is down")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((kind, channel), deque()).append(waiter)
        try:
            await self._conn.send_command(kind.upper(), channel, check_health=False)
        except (OSError, ConnectionError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc
        await waiter

    async def run(self) -> None:
        """Read until the connection fails; every message goes to the handler in order."""
        assert self._conn is not None
        try:
            while True:
                reply = await self._conn.read_response(timeout=math.inf)
                self._dispatch(reply)
        finally:
            self._fail_waiters(BackendUnavailable("pub/sub connection lost"))

    def _dispatch(self, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            log.warning("unexpected pub/sub reply", reply=repr(reply)[:200])
            return
        kind, channel, payload = reply[0], reply[1], reply[2]
        if kind == b"message":
            try:
                self._on_message(channel, payload)
            except Exception:
                log.exception("pub/sub message handler failed")
            return
        waiters = self._waiters.get((kind, channel))
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
