"""This node's share of one room, and how room events reach its local peers.

Every frame a local client receives from others is handed over here, whether it came back
from the backend in channel order (the normal path) or directly while the backend is down.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from app.core.closes import CLOSE_REPLACED
from app.core.envelope import Join, Resume
from app.core.member import Member
from app.core.notices import Notices


@dataclass(eq=False)
class LocalRoom:
    name: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conns: dict[str, Member] = field(default_factory=dict)  # every local connection, by conn id
    active: dict[str, Member] = field(default_factory=dict)  # receiving frames, by peer id
    subscribed: bool = False

    def relay(self, to: str, frame: bytes) -> bool:
        target = self.active.get(to)
        if target is None:
            return False
        target.deliver(frame)
        return True

    def chat(self, frame: bytes) -> None:
        for target in self.active.values():
            target.deliver(frame)

    def joined(self, node_id: str, env: Join) -> None:
        """A join envelope: takeover of a local connection, announcements, activation.

        A local joiner becomes active at its own join envelope: from here on it hears every
        event, and its welcome snapshot (taken atomically with this join) covers the rest.
        """
        old = self.active.get(env.peer)
        if old is not None and old.conn != env.conn:
            del self.active[env.peer]
            old.replaced = True
            old.close(CLOSE_REPLACED, "replaced by a newer connection")
        joiner = self.conns.get(env.conn) if env.node == node_id else None
        if env.node == node_id and joiner is None:
            # This node's connection ended before its join came back (a repair's rejoin,
            # or a join whose client went at once): its leave follows; locals hear neither.
            return
        notices = Notices(self.name, env.peer, left_event=False)
        for target in self.active.values():
            target.hear_join(env.peer, env.takeover, notices)
        if joiner is not None and not joiner.closing and env.peer not in self.active:
            self.active[env.peer] = joiner

    def resumed(self, node_id: str, env: Resume) -> Member | None:
        """A resume envelope: nobody is told; the resuming connection, if it is here, hears
        from here on. Returns the member it took over from, if that one is here."""
        old = self.active.get(env.peer)
        if old is not None and old.conn != env.conn:
            del self.active[env.peer]
        else:
            old = None
        joiner = self.conns.get(env.conn) if env.node == node_id else None
        if joiner is not None and not joiner.closing:
            self.active[env.peer] = joiner
        return old

    def left(self, peer: str) -> None:
        """A leave: announced to local peers that knew `peer`.

        It never deactivates a local connection: a local client that is still connected
        stays in the room even if its membership was removed behind its back (the node
        was reaped while Redis was away); the node re-creates that membership on recovery.
        """
        notices = Notices(self.name, peer, left_event=True)
        for target in self.active.values():
            target.hear_leave(peer, notices)

    def remote_peers(self, sender: Member) -> bool:
        """Does `sender` know of peers that are not on this node?"""
        return any(p not in self.active for p in (sender.known or ()))
