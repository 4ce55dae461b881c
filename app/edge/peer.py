"""A member's connection: its outgoing WebSocket frames, queued, coalesced and bounded.

Frames reach a peer from the backend's reader, which must never wait for a client. So
`send` only queues; at the end of the event-loop turn (`Outbox`) each peer with queued
frames writes them in one call, several frames per syscall under load. While the transport
is paused (its buffer is full) the queue waits for `resume_writing`.

A slow consumer is judged over time, not by one burst: a peer whose unsent frames stay
over the queue limit (SEND_QUEUE_BYTES) for SLOW_CONSUMER_SECONDS is closed (1008), so a
peer that reads survives a burst others sent it in one moment. Memory stays bounded:
past HARD_QUEUE_FACTOR times the limit it is closed at once. Senders are held back by
their own byte rate (RATE_LIMIT_BYTES_PER_S), so one flooding peer cannot get there alone.
No task per connection: reading is `app/edge/connection.py`.
"""

from __future__ import annotations

import asyncio
from collections import deque

import structlog

from app.core.closes import CLOSE_GOING_AWAY, CLOSE_POLICY
from app.core.limits import RateLimit
from app.core.member import Member, MemberFactory
from app.edge.wsframe import close_frame, text_frame, text_payload

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT = 0.5  # a client that does not take our close frame is cut off after this
SLOW_CONSUMER_SECONDS = 0.5  # over the queue limit this long: closed as a slow consumer
HARD_QUEUE_FACTOR = 8  # over this many times the limit: closed at once (memory bound)
BATCH_BYTES = 65536  # at most this much payload per coalesced write


class Outbox:
    """Writes what peers were sent during one event-loop turn, at its end: one write per
    peer per turn instead of one per frame (a node's Redis reader hands over frames in
    batches, so under load a peer gets several per turn)."""

    __slots__ = ("_dirty", "_loop")

    def __init__(self) -> None:
        self._dirty: list[Peer] = []
        # Bound at the first mark, then kept: asyncio.get_running_loop() costs a getpid()
        # syscall per call (CPython 3.11 checks for a fork).
        self._loop: asyncio.AbstractEventLoop | None = None

    def mark(self, peer: Peer) -> None:
        if not self._dirty:
            loop = self._loop
            if loop is None or loop.is_closed():
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush)
        self._dirty.append(peer)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for peer in dirty:
            try:
                peer.flush()
            except Exception:  # one peer's failure must not hold up the others' frames
                log.exception("writing to a peer failed", room=peer.room, peer=peer.id)


class Peer(Member):
    """A member whose frames go to a WebSocket on a raw transport (`app/edge/connection.py`)."""

    __slots__ = (
        "_bytes", "_closing", "_cutoff", "_judge", "_kept", "_limit", "_outbox", "_paused",
        "_queue", "_timer", "_transport", "client_closed",
    )

    def __init__(self, room: str, peer_id: str, conn: str, rate: RateLimit,
                 queue_limit: int, outbox: Outbox) -> None:
        super().__init__(room, peer_id, conn, rate)
        self._transport: asyncio.Transport | None = None
        self._paused = False  # the transport's buffer is above its high-water mark
        self._queue: deque[bytes] | None = None  # created when first needed
        self._bytes = 0
        self._limit = queue_limit
        self._outbox = outbox
        self._closing: tuple[int, str] | None = None
        self._timer: asyncio.TimerHandle | None = None  # token expiry
        self._cutoff: asyncio.TimerHandle | None = None  # aborts a close the client ignores
        self._judge: asyncio.TimerHandle | None = None  # closes a queue that stays too long
        # Closed with 1001 (drain): frames never written, kept for the session's resume.
        self._kept: list[bytes] | None = None
        self.client_closed = False  # the client sent its close frame: it is leaving

    def send(self, frame: bytes) -> None:
        """Queue one frame (encoded JSON); it is written at the end of this loop turn, or
        once the transport takes more. Never blocks."""
        self.send_frame(text_frame(frame))

    def send_frame(self, data: bytes) -> None:
        """Queue one whole WebSocket frame (a text frame, or a pong), counted like any."""
        if self._closing is not None:
            if self._kept is not None:
                self._kept.append(data)
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
            if self._transport is not None and not self._paused:
                self._outbox.mark(self)
        queue.append(data)
        self._bytes += len(data)
        if self._bytes > self._limit:
            if self._bytes > self._limit * HARD_QUEUE_FACTOR:
                self._overflow("send queue far over its limit")
            elif self._judge is None:
                self._judge = asyncio.get_running_loop().call_later(
                    SLOW_CONSUMER_SECONDS, self._judged)

    def _judged(self) -> None:
        self._judge = None
        if self._bytes > self._limit:
            self._overflow("send queue full")

    def _overflow(self, why: str) -> None:
        log.warning("slow consumer, closing peer", room=self.room, peer=self.id,
                    queued_bytes=self._bytes, why=why)
        self.overflowed = True
        self.close(CLOSE_POLICY, "send queue full")

    def attach(self, transport: asyncio.Transport) -> None:
        """Start writing to the upgraded socket: the welcome, then what arrived since."""
        self._transport = transport
        if self._closing is not None:  # closed (kick, takeover) between the join and now
            self._send_close(*self._closing)
            return
        transport.write(text_frame(self.welcome))
        self.welcome = b""  # sent once: an idle connection should not hold it
        self.flush()

    def detach(self) -> None:
        """The connection is over: nothing more is written, timers stop. What was never
        written stays queued, for `unsent` (a session held for resume)."""
        self._transport = None
        for timer in (self._timer, self._cutoff, self._judge):
            if timer is not None:
                timer.cancel()
        self._timer = self._cutoff = self._judge = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.flush()

    def close(self, code: int, reason: str) -> None:
        """Close the connection from the node's side (takeover, overflow, shutdown)."""
        if self._closing is not None:
            return
        self._closing = (code, reason)
        if self._transport is not None and not self._paused:
            self.flush()  # frames sent before the close (this turn's) still go first
        if code == CLOSE_GOING_AWAY and not self.client_closed:
            self._kept = list(self._queue or ())  # the session may resume elsewhere
        self._queue = None
        self._bytes = 0
        if self._transport is not None:
            self._send_close(code, reason)

    def close_later(self, delay: float, code: int, reason: str) -> None:
        """Close after `delay` seconds (token expiry) unless the connection ends first."""
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, delay), self.close, code, reason)

    @property
    def closing(self) -> bool:
        return self._closing is not None

    @property
    def resumable(self) -> bool:
        """Lost, timed out or drained (1001); not the client's close, nor a close the node
        decided on for cause (kick, takeover, policy, protocol)."""
        return not self.client_closed and (
            self._closing is None or self._closing[0] == CLOSE_GOING_AWAY)

    def unsent(self) -> list[bytes]:
        frames = [*(self._queue or ()), *(self._kept or ())]
        self._queue = self._kept = None
        self._bytes = 0
        return [p for p in map(text_payload, frames) if p is not None]

    def flush(self) -> None:
        """Write queued frames, up to BATCH_BYTES per syscall, while the transport takes
        them; the rest waits for `resume_writing`."""
        queue, transport = self._queue, self._transport
        # is_closing: the socket may be closed a moment before `detach` (connection_lost)
        # runs, and uvloop raises on a write to a closed one.
        while queue and transport is not None and not self._paused and not transport.is_closing():
            out: list[bytes] = []
            size = 0
            while queue and size < BATCH_BYTES:
                frame = queue.popleft()
                size += len(frame)
                out.append(frame)
            self._bytes -= size
            transport.write(b"".join(out))
        if self._judge is not None and self._bytes <= self._limit:
            self._judge.cancel()  # it drained in time: not a slow consumer
            self._judge = None
        if queue is not None and not queue:
            self._queue = None  # an idle peer holds no deque

    def _send_close(self, code: int, reason: str) -> None:
        """Send the close frame; cut the TCP connection if the client does not answer it
        (its close frame ends the connection, `app/edge/connection.py`) within CLOSE_TIMEOUT."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(close_frame(code, reason))
        self._cutoff = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)


def peer_factory(queue_limit: int) -> MemberFactory:
    """How the service makes members on this node: WebSocket peers sharing one Outbox."""
    outbox = Outbox()

    def new(room: str, peer_id: str, conn: str, rate: RateLimit) -> Member:
        return Peer(room, peer_id, conn, rate, queue_limit, outbox)
    return new


def as_peer(member: Member) -> Peer:
    """The service hands back the members `peer_factory` made: on this node, Peers."""
    if not isinstance(member, Peer):
        raise TypeError(f"not a WebSocket peer: {member!r}")
    return member
