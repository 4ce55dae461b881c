"""A client's WebSocket after the upgrade: an `asyncio.Protocol` on the raw transport.

aiohttp answers the HTTP request and runs the checks before the upgrade (`app/edge/ws.py`);
then the transport is handed to a `Connection` and aiohttp lets go of it. From there on
frames are read in `data_received` and handled in the same call when the backend takes
them at once (the usual case), so a connection costs no task, no queue and no retained
HTTP request: an idle one is a transport, this object and its `Peer` (bench/PROFILE.md).

A frame whose handling has to wait (the backend's write buffer is full) pauses reading
until it is done, so a client's frames are still handled one after another, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import structlog

from app.core.closes import CLOSE_INTERNAL_ERROR, CLOSE_INVALID_TEXT, CLOSE_NO_STATUS, CLOSE_NORMAL
from app.core.service import SignalingService
from app.edge import wsframe
from app.edge.peer import Peer
from app.edge.wsframe import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader

log = structlog.get_logger(__name__)

AFTER_CLOSE_BYTES = 65536  # read after the node's close frame before cutting the client off


class _Continue:
    """Lets a Task finish a coroutine that was started synchronously and then suspended.

    `coro.send(None)` ran it up to its first wait (`waiting`); awaiting this object hands
    that wait to the Task and then resumes the same coroutine, as the Task would have.
    """

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        waiting, self._waiting = self._waiting, None
        while True:
            try:
                yield waiting
            except BaseException as exc:  # cancellation reaches the coroutine's own wait
                try:
                    waiting = self._coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = self._coro.send(None)
                except StopIteration:
                    return


class Connection(asyncio.Protocol):
    __slots__ = ("_after_close", "_busy", "_ended", "_heard", "_pending", "_pinged", "_reader",
                 "_service", "_sockets", "peer", "release", "transport")

    def __init__(self, peer: Peer, service: SignalingService, sockets: Sockets,
                 max_size: int, release: Callable[[], None]) -> None:
        self.peer = peer
        self.release = release  # frees the client's connection slot (MAX_CONNS_PER_IP)
        self.transport: asyncio.Transport | None = None
        self._service = service
        self._sockets = sockets
        self._reader = FrameReader(max_size)
        self._busy: asyncio.Future[None] | None = None  # a frame whose handling waits
        self._pending: list[tuple[int, bytes]] = []  # frames read behind that one
        self._ended = False  # nothing more is read: closing, failed or lost
        self._heard = True  # something arrived since the last heartbeat sweep
        self._pinged = False
        self._after_close = 0  # bytes read since the node sent its close frame

    def take_over(self, transport: asyncio.Transport, early: bytes) -> None:
        """Become the transport's protocol; `early` is what arrived with the request."""
        self.transport = transport
        transport.set_protocol(self)
        self._sockets.add(self)
        self.peer.attach(transport)
        # aiohttp pauses the socket once 64 KiB of early frames wait behind the request it
        # is still handling (the join); nothing of aiohttp's would resume it now.
        if not transport.is_reading():
            transport.resume_reading()
        if early:
            self.data_received(early)

    # -- reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._heard = True
        if self._ended:
            return
        if self.peer.closing:
            # The node has closed (a flood, a slow consumer, a drain): read on only to find
            # the client's close frame, and only so much; a client still flooding past
            # that is cut off now instead of costing CPU until the close times out.
            self._after_close += len(data)
            if self._after_close > AFTER_CLOSE_BYTES and self.transport is not None:
                self._ended = True
                self.transport.abort()
                return
        try:
            messages = self._reader.feed(data)
        except wsframe.ProtocolViolation as exc:
            self._fail(exc.code, exc.reason)
            return
        if self._busy is not None:
            self._pending.extend(messages)
        elif messages:
            self._dispatch(messages)

    def _dispatch(self, messages: list[tuple[int, bytes]]) -> None:
        for index, (opcode, payload) in enumerate(messages):
            if self._ended:
                return
            if opcode == OP_TEXT:
                if self.peer.closing and not self.peer.resumable:
                    continue  # closing: only the client's close frame matters now
                # Drained (1001): what the client sent before it saw the close still counts.
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self._fail(CLOSE_INVALID_TEXT, "text frame is not UTF-8")
                    return
                if self._handle(text):
                    self._pending = messages[index + 1:]
                    return
            elif opcode == OP_BINARY:
                if not self.peer.closing:
                    self._service.handle_binary(self.peer)
            elif opcode == OP_PING:
                # Queued like any frame, so a client that pings and never reads fills its
                # send queue and is judged a slow consumer, instead of growing the buffer.
                if self._service.handle_control(self.peer) and not self.peer.closing:
                    self.peer.send_frame(wsframe.frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._closed_by_client(payload)
                return
            else:  # OP_PONG: its arrival counts as hearing from the client; and as a frame
                self._service.handle_control(self.peer)

    def _handle(self, text: str) -> bool:
        """Handle one text frame now; True if it had to wait (reading pauses until done)."""
        coro = self._service.handle_text(self.peer, text)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return False
        except Exception:
            log.exception("frame handling failed", room=self.peer.room, peer=self.peer.id)
            self._fail(CLOSE_INTERNAL_ERROR, "internal error")
            return False
        self._busy = busy = asyncio.ensure_future(_Continue(coro, waiting))
        busy.add_done_callback(self._handled)
        assert self.transport is not None
        self.transport.pause_reading()
        return True

    def _handled(self, busy: asyncio.Future[None]) -> None:
        self._busy = None
        if busy.cancelled() or self._ended:
            return
        if busy.exception() is not None:
            log.error("frame handling failed", room=self.peer.room, peer=self.peer.id,
                      exc_info=busy.exception())
            self._fail(CLOSE_INTERNAL_ERROR, "internal error")
            return
        pending, self._pending = self._pending, []
        assert self.transport is not None
        self.transport.resume_reading()
        self._dispatch(pending)

    # -- closing ---------------------------------------------------------------------------

    def _closed_by_client(self, payload: bytes) -> None:
        try:
            code, _ = wsframe.parse_close(payload)
        except wsframe.ProtocolViolation as exc:
            self._fail(exc.code, exc.reason)
            return
        self._ended = True
        if not self.peer.closing:  # its own close, not the answer to the node's
            self.peer.client_closed = True
        # Echo the client's code, unless the node had already sent its own close.
        self.peer.close(CLOSE_NORMAL if code == CLOSE_NO_STATUS else code, "")
        if self.transport is not None:
            self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """Close with `code` after a broken frame; nothing more is read."""
        self._ended = True
        self.peer.close(code, reason)
        if self.transport is not None:
            self.transport.close()

    def beat(self) -> None:
        """One heartbeat sweep: ping a quiet client; drop one that did not answer a ping."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._heard:
            self._heard = self._pinged = False
        elif self._pinged:
            log.info("no pong: dropping connection", room=self.peer.room, peer=self.peer.id)
            transport.abort()
        elif not self.peer.closing:
            self._pinged = True
            transport.write(wsframe.PING)

    # -- what the transport reports ----------------------------------------------------------

    def pause_writing(self) -> None:
        self.peer.pause_writing()

    def resume_writing(self) -> None:
        self.peer.resume_writing()

    def eof_received(self) -> bool:
        return False  # a half-closed client is done: close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self._ended = True
        self.transport = None
        self.peer.detach()
        busy, self._busy = self._busy, None
        if busy is not None:
            busy.cancel()
        self._pending = []
        self._sockets.ended(self, busy)


class Sockets:
    """The node's open connections: heartbeat sweeps, leaves, and closing at shutdown."""

    def __init__(self, service: SignalingService, heartbeat: float) -> None:
        self._service = service
        self._open: set[Connection] = set()
        self._leaving: set[asyncio.Task[None]] = set()
        self._interval = heartbeat / 2  # a ping after 0.5-1 quiet intervals, dead 0.5 later
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    def add(self, conn: Connection) -> None:
        self._open.add(conn)

    def ended(self, conn: Connection, busy: asyncio.Future[None] | None) -> None:
        """A connection is over: its peer leaves (after its last frame's handling ends)."""
        self._open.discard(conn)
        task = asyncio.create_task(self._leave(conn, busy), name=f"leave:{conn.peer.id}")
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _leave(self, conn: Connection, busy: asyncio.Future[None] | None) -> None:
        held = None
        try:
            if busy is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await busy
            held = await self._service.leave(conn.peer)
        finally:
            if held is not None and not held.ended:
                held.release = conn.release  # the slot is the held session's until it ends
            else:
                conn.release()

    def _sweep(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep)
        for conn in list(self._open):
            conn.beat()

    async def close(self) -> None:
        """At shutdown, after the peers were sent 1001: cut what is left, wait for leaves."""
        if self._timer is not None:
            self._timer.cancel()
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abort()
        while self._leaving:
            await asyncio.gather(*self._leaving, return_exceptions=True)
