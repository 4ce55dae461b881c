"""A member whose connection ended but whose session may still resume (contract §6).

It stays in its room and hears what a connected member would (relays, chats, `new-peer`
and `peer-left`, each once), but what it hears goes to its backlog in the backend, written
by one task at a time so the order holds. It ends in one of three ways, all decided by
the service (`app/core/service.py`): the resume envelope came (the writer finishes, then
publishes `handed`), RESUME_SECONDS passed, or it heard more than RESUME_BACKLOG frames
or more bytes than its resume could deliver (both announced as a leave).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from app.core.member import Member


class Keeper(Protocol):
    """What a held member needs from the service."""

    def write_backlog(self, held: Held) -> None:
        """Frames are waiting (or a hand-over): make sure a writer is on it."""

    def end_hold(self, held: Held, announce: bool) -> None:
        """The hold is over without a resume: leave (announced unless replaced)."""


class Held(Member):
    __slots__ = ("_keeper", "_limit", "_max_bytes", "bytes", "count", "ended", "handing_to",
                 "pending", "release", "since", "timer", "writer")

    def __init__(self, old: Member, limit: int, max_bytes: int, keeper: Keeper) -> None:
        super().__init__(old.room, old.id, old.conn, old.rate)
        self.perms = old.perms
        self.known = old.known
        self._keeper = keeper
        self._limit = limit
        self.since = time.time()  # when its connection ended: its grace counts from here
        self._max_bytes = max_bytes
        self.bytes = 0
        # Gives back the client's connection slot (MAX_CONNS_PER_IP) once the hold is over:
        # a session held for resume still counts, so dropping connections in a loop
        # cannot pile up held sessions.
        self.release: Callable[[], None] | None = None
        self.pending: list[bytes] = []  # heard, not yet handed to the backend
        self.count = 0  # frames heard since the connection ended
        self.ended = False
        self.handing_to: str | None = None  # the resuming connection, once it is known
        self.timer: asyncio.TimerHandle | None = None  # RESUME_SECONDS
        self.writer: asyncio.Task[None] | None = None

    def send(self, frame: bytes) -> None:
        if self.ended or self.handing_to is not None:
            return
        self.count += 1
        self.bytes += len(frame)
        if self.count > self._limit or self.bytes > self._max_bytes:  # it would overflow
            self._keeper.end_hold(self, announce=True)
            return
        self.pending.append(frame)
        self._keeper.write_backlog(self)

    def close(self, code: int, reason: str) -> None:
        """A takeover or a kick while away: the hold ends (announced unless replaced)."""
        self._keeper.end_hold(self, announce=not self.replaced)

    def close_later(self, delay: float, code: int, reason: str) -> None:
        return None  # a token's expiry closes the connection, which is already gone

    @property
    def closing(self) -> bool:
        return self.ended

    def take(self) -> list[bytes]:
        frames, self.pending = self.pending, []
        return frames
