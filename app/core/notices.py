"""`new-peer` / `peer-left` frames for one event, encoded once however many peers hear it."""

from __future__ import annotations

from functools import cached_property

from app.core import protocol


class Notices:
    __slots__ = ("__dict__", "left_event", "peer", "room")

    def __init__(self, room: str, peer: str, left_event: bool) -> None:
        self.room = room
        self.peer = peer
        self.left_event = left_event  # this event is a leave (else a join)

    @cached_property
    def joined(self) -> bytes:
        return protocol.notice_frame("new-peer", self.room, self.peer)

    @cached_property
    def left(self) -> bytes:
        return protocol.notice_frame("peer-left", self.room, self.peer)
