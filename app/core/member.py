"""A member of a room as the core sees it: who it is, what it was told, where frames go.

The core decides what a member hears (welcome, `new-peer`/`peer-left` once each, relays,
chat); how the frames reach a client is the edge's (`app/edge/peer.py`), behind `send` and
`close`. `known` is the set of peers this client has been told are present, so no
announcement reaches it twice even when a join or leave is heard from several sources.
Until it is known (the join's snapshot, or a resume's hand-over), what the member hears
waits, frames and announcements in one order, and is replayed in that order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from app.core.limits import RateLimit
from app.core.notices import Notices


class Member(ABC):
    __slots__ = (
        "_early", "conn", "id", "known", "overflowed", "perms", "rate", "replaced", "room",
        "welcome",
    )

    def __init__(self, room: str, peer_id: str, conn: str, rate: RateLimit) -> None:
        self.room = room
        self.id = peer_id
        self.conn = conn
        self.rate = rate
        self.perms: frozenset[str] | None = None  # None: no token auth, all allowed
        self.welcome: bytes = b""
        self.replaced = False  # closed because a newer connection took this peer id
        # Peers this client has been told are present (welcome, then new-peer/peer-left).
        # None until the join's snapshot is known; what it hears meanwhile waits in `_early`.
        self.known: set[str] | None = None
        self._early: list[bytes | tuple[str, bool, Notices]] | None = None
        self.overflowed = False  # closed because its send queue overflowed (metrics)

    @abstractmethod
    def send(self, frame: bytes) -> None:
        """Queue one frame (encoded JSON) for the client; never blocks."""

    @abstractmethod
    def close(self, code: int, reason: str) -> None:
        """End the client's connection from the node's side, with a close code."""

    @abstractmethod
    def close_later(self, delay: float, code: int, reason: str) -> None:
        """Close after `delay` seconds (token expiry) unless the connection ends first."""

    @property
    @abstractmethod
    def closing(self) -> bool:
        """A close was asked for: nothing more is sent."""

    @property
    def resumable(self) -> bool:
        """Did the connection end in a way that keeps the session for a resume (§6)?"""
        return False

    def unsent(self) -> list[bytes]:
        """Frames queued for the client and never written (its connection has ended)."""
        return []

    def deliver(self, frame: bytes) -> None:
        """A relay or chat for this member: sent now, or once its snapshot is known."""
        if self.known is None:
            self._wait(frame)
        else:
            self.send(frame)

    def _wait(self, item: bytes | tuple[str, bool, Notices]) -> None:
        if self._early is None:
            self._early = []
        self._early.append(item)

    def hear_join(self, peer: str, takeover: bool, notices: Notices) -> None:
        """Announce `peer` unless this client already knows it (then only a takeover shows)."""
        if peer == self.id:
            return
        if self.known is None:
            self._wait((peer, takeover, notices))
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
            self._wait((peer, False, notices))
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

    def learn_snapshot(self, peers: list[str] | tuple[str, ...]) -> None:
        """What this client knows at its join (or resume); replay what it heard meanwhile."""
        self.known = set(peers)
        early, self._early = self._early or [], None
        for item in early:
            if isinstance(item, bytes):
                self.send(item)
                continue
            peer, takeover, notices = item
            if notices.left_event:
                self.hear_leave(peer, notices)
            else:
                self.hear_join(peer, takeover, notices)


MemberFactory = Callable[[str, str, str, RateLimit], Member]
"""(room, peer id, connection id, its rate limit) -> a new member: the edge's kind."""
