"""One connected client: its identity, a bounded send queue, and the task that writes it.

Frames reach a peer from the backend's reader, which must never wait for a client. So
`send` only appends to this peer's queue; a writer task per connection drains it. A peer
whose unsent frames exceed the queue limit is closed (1008) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from app.limits import TokenBucket

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT = 1.0  # a client that does not take our close frame is cut off after this
BATCH_BYTES = 65536  # at most this much payload per coalesced write
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _LEN2(0x81, 126, n) + payload
    return _LEN8(0x81, 127, n) + payload


class Peer:
    __slots__ = (
        "_bytes", "_closer", "_closing", "_limit", "_queue", "_transport", "_wake", "_writer",
        "bucket", "conn", "id", "replaced", "room", "welcome", "ws",
    )

    def __init__(self, room: str, peer_id: str, conn: str, queue_limit: int,
                 bucket: TokenBucket) -> None:
        self.room = room
        self.id = peer_id
        self.conn = conn
        self.bucket = bucket
        self.welcome: bytes = b""
        self.replaced = False  # closed because a newer connection took this peer id
        self.ws: web.WebSocketResponse | None = None
        self._transport: asyncio.Transport | None = None
        self._closer: asyncio.Task[None] | None = None
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._limit = queue_limit
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        """Send one frame (encoded JSON): to the socket if nothing waits, else queued. Never
        blocks."""
        if self._closing is not None:
            return
        transport = self._transport
        if not self._queue and transport is not None and self._writable_now():
            # Nothing queued or unsent: write now, in order, without waking the writer task
            # (one task switch per delivered frame, bench/PROFILE.md).
            transport.write(text_frame(frame))
            return
        self._queue.append(frame)
        self._bytes += len(frame)
        if self._bytes > self._limit:
            log.warning("send queue full, closing peer", room=self.room, peer=self.id,
                        queued_bytes=self._bytes)
            self.close(WSCloseCode.POLICY_VIOLATION, "send queue full")
            return
        self._wake.set()

    def attach(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        """Start writing to `ws`: the welcome first, then whatever arrived since the join."""
        self.ws = ws
        self._transport = transport
        self._queue.appendleft(self.welcome)
        self._bytes += len(self.welcome)
        self.welcome = b""  # sent once: an idle connection should not hold it
        self._writer = asyncio.create_task(self._write(ws), name=f"writer:{self.id}")
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        """Close the connection from the node's side (takeover, overflow, shutdown)."""
        if self._closing is not None:
            return
        self._closing = (code, reason)
        self._queue.clear()
        self._bytes = 0
        if self._writer is not None:
            self._writer.cancel()  # it may be stuck writing to a client that does not read
        if self.ws is not None:
            self._closer = asyncio.create_task(self._close_ws(self.ws, code, reason))

    @property
    def closing(self) -> bool:
        return self._closing is not None

    async def stop(self) -> None:
        """Stop the writer; called once the connection is over."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def _write(self, ws: web.WebSocketResponse) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    if len(self._queue) > 1 and self._write_batch(ws):
                        continue
                    frame = self._queue.popleft()
                    self._bytes -= len(frame)
                    await ws.send_frame(frame, WSMsgType.TEXT)
                    del frame  # not kept alive while this writer waits
        except (ConnectionError, RuntimeError):
            pass  # the client went away; the handler's receive loop ends and cleans up

    def _writable_now(self) -> bool:
        """The socket takes a frame now: attached, not closing, nothing unsent in it."""
        transport, ws = self._transport, self.ws
        return (transport is not None and ws is not None and self._writer is not None
                and not ws.closed and not transport.is_closing()
                and not transport.get_write_buffer_size())

    def _write_batch(self, ws: web.WebSocketResponse) -> bool:
        """Write several queued frames with one syscall instead of one each (bench/PROFILE.md).

        Only while the socket has nothing unsent, so flow control stays aiohttp's and a slow
        client still fills the queue; never once the close has begun (no data after the
        close frame). Synchronous: nothing can interleave with a batch.
        """
        transport = self._transport
        if transport is None or not self._writable_now():
            return False
        out: list[bytes] = []
        size = 0
        while self._queue and size < BATCH_BYTES:
            frame = self._queue.popleft()
            self._bytes -= len(frame)
            size += len(frame)
            out.append(text_frame(frame))
        transport.write(b"".join(out))
        return True

    async def _close_ws(self, ws: web.WebSocketResponse, code: int, reason: str) -> None:
        closed = False
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await ws.close(code=code, message=reason.encode())
            closed = True
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        finally:
            # Not closed cleanly: the client does not read, or aiohttp's drain waiter, which
            # close() shares with the writer we cancelled, raised CancelledError here. Either
            # way cut the TCP connection, so that the handler ends and the peer is announced.
            if not closed and self._transport is not None:
                self._transport.abort()
