"""One connected client: its identity, a bounded send queue, and the task that writes it.

Frames reach a peer from the backend's reader, which must never wait for a client. So
`send` writes straight to the socket only when nothing is queued or unsent there, and
otherwise appends to this peer's queue, which a writer task per connection drains
(several frames per write). A peer whose unsent frames exceed the queue limit is closed
(1008) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from app.limits import RateLimit
from app.notices import Notices

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT = 0.5  # a client that does not take our close frame is cut off after this
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
        "_backlog", "_bytes", "_closer", "_closing", "_limit", "_queue", "_timer", "_transport",
        "_wake", "_writer", "conn", "id", "known", "overflowed", "perms", "rate", "replaced",
        "room", "welcome", "ws",
    )

    def __init__(self, room: str, peer_id: str, conn: str, queue_limit: int,
                 rate: RateLimit) -> None:
        self.room = room
        self.id = peer_id
        self.conn = conn
        self.rate = rate
        self.perms: frozenset[str] | None = None  # None: no token auth, all allowed
        self.welcome: bytes = b""
        self.replaced = False  # closed because a newer connection took this peer id
        # Peers this client has been told are present (welcome, then new-peer/peer-left).
        # None until the join's snapshot is known; announcements wait in the backlog.
        self.known: set[str] | None = None
        self._backlog: list[tuple[str, bool, Notices]] = []
        self.overflowed = False  # closed because its send queue overflowed (metrics)
        self.ws: web.WebSocketResponse | None = None
        self._transport: asyncio.Transport | None = None
        self._closer: asyncio.Task[None] | None = None
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._limit = queue_limit
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing: tuple[int, str] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def send(self, frame: bytes) -> None:
        """Send one frame (encoded JSON): to the socket if nothing waits, else queued.

        Never blocks. Writing directly saves a task switch per delivered frame
        (bench/PROFILE.md); order holds because it happens only with nothing queued.
        """
        if self._closing is not None:
            return
        transport = self._transport
        if not self._queue and transport is not None and self._writable_now():
            transport.write(text_frame(frame))
            return
        self._queue.append(frame)
        self._bytes += len(frame)
        if self._bytes > self._limit:
            log.warning("send queue full, closing peer", room=self.room, peer=self.id,
                        queued_bytes=self._bytes)
            self.overflowed = True
            self.close(WSCloseCode.POLICY_VIOLATION, "send queue full")
            return
        self._wake.set()

    def hear_join(self, peer: str, takeover: bool, notices: Notices) -> None:
        """Announce `peer` unless this client already knows it (then only a takeover shows)."""
        if peer == self.id:
            return
        if self.known is None:
            self._backlog.append((peer, takeover, notices))
        elif peer not in self.known:
            self.known.add(peer)
            self.send(notices.joined)
        elif takeover:
            self.send(notices.left)
            self.send(notices.joined)

    def hear_leave(self, peer: str, notices: Notices) -> None:
        """Announce that `peer` left, if this client believes it present (so, once)."""
        if peer == self.id:
            return
        if self.known is None:
            self._backlog.append((peer, False, notices))
        elif peer in self.known:
            self.known.discard(peer)
            self.send(notices.left)

    def resync(self, members: tuple[str, ...], room: str) -> None:
        """Align with the room's true membership: announce what this client missed."""
        if self.known is None:
            return
        present = set(members)
        present.discard(self.id)
        for peer in sorted(self.known - present):
            self.hear_leave(peer, Notices(room, peer, left_event=True))
        for peer in sorted(present - self.known):
            self.hear_join(peer, False, Notices(room, peer, left_event=False))

    def learn_snapshot(self, peers: list[str]) -> None:
        """The membership at this peer's own join; replay what was announced meanwhile."""
        self.known = set(peers)
        backlog, self._backlog = self._backlog, []
        for peer, takeover, notices in backlog:
            if notices.left_event:
                self.hear_leave(peer, notices)
            else:
                self.hear_join(peer, takeover, notices)

    def attach(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        """Start writing to `ws`: the welcome first, then whatever arrived since the join."""
        self.ws = ws
        self._transport = transport
        if self._closing is not None:  # closed (kick, takeover) between the join and now
            self._closer = asyncio.create_task(self._close_ws(ws, *self._closing))
            return
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
        self._wake.set()  # the writer stops; it is not cancelled (see `_close_ws`)
        if self.ws is not None:
            self._closer = asyncio.create_task(self._close_ws(self.ws, code, reason))

    def close_later(self, delay: float, code: int, reason: str) -> None:
        """Close after `delay` seconds (token expiry) unless the connection ends first."""
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, delay), self.close, code, reason)

    @property
    def closing(self) -> bool:
        return self._closing is not None

    async def stop(self) -> None:
        """Stop the writer, any close in progress and any pending timer; called once the
        connection is over."""
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._closer, self._writer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _write(self, ws: web.WebSocketResponse) -> None:
        try:
            while self._closing is None:
                await self._wake.wait()
                self._wake.clear()
                while self._queue and self._closing is None:
                    if len(self._queue) > 1 and self._write_batch():
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
                and self._closing is None and not ws.closed and not transport.is_closing()
                and not transport.get_write_buffer_size())

    def _write_batch(self) -> bool:
        """Write several queued frames with one syscall instead of one each.

        Only while the socket has nothing unsent, so flow control stays aiohttp's and a
        slow client still fills the queue. Synchronous: nothing can interleave with it.
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
        """Send the close frame; cut the TCP connection if the client does not take it.

        aiohttp's writers share one drain future per connection, so cancelling a writer
        that waits on a client which does not read would cancel this close too: the
        writer is only told to stop, and a stalled close ends by aborting the transport.
        """
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await ws.close(code=code, message=reason.encode(), drain=False)
        except (TimeoutError, ConnectionError, RuntimeError):
            self._abort()
        except asyncio.CancelledError:
            self._abort()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task itself is being cancelled, not just a shared future

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
