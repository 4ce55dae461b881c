"""The signaling service: rooms, peers and the rules of contract §1 and §3.

It knows nothing of Redis or of HTTP. Joins, leaves, relays and chats go to the backend,
and come back, in channel order, through `on_envelope`, which is the single place where
frames are handed to local peers. What a peer is told depends only on its position in
that order:

- a joiner becomes *active* when its own join envelope comes back; its `welcome` lists
  the members at that very point (returned by the atomic join), and it is told every
  later join and leave, so nothing is missed or announced twice;
- a join for a peer id that a local connection holds closes that connection (4001).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import structlog

from app import envelope, protocol
from app.auth import PERM_CHAT
from app.backend import Backend, BackendUnavailable
from app.config import Settings
from app.envelope import BadEnvelope, Chat, Join, Leave, Relay
from app.ids import is_valid_peer, new_conn_id
from app.limits import RateLimit, Verdict
from app.peer import Peer
from app.protocol import ErrorCode, FrameError

log = structlog.get_logger(__name__)

CLOSE_REPLACED = 4001
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


class NodeFull(Exception):
    """This node already hosts MAX_ROOMS_PER_NODE rooms; another node may take the peer."""


@dataclass(eq=False)
class LocalRoom:
    """This node's share of one room: its connections and the channel subscription."""

    name: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conns: dict[str, Peer] = field(default_factory=dict)  # every local connection, by conn id
    active: dict[str, Peer] = field(default_factory=dict)  # receiving frames, by peer id
    subscribed: bool = False


class SignalingService:
    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.node_id = backend.node_id
        self.rooms: dict[str, LocalRoom] = {}
        self.stats: Counter[str] = Counter()

    # -- joining and leaving -------------------------------------------------------------

    async def join(self, room: str, peer_id: str, perms: frozenset[str] | None = None) -> Peer:
        """Add a peer to the room (before the upgrade, so refusals are plain HTTP).

        `perms` None means no token auth: everything is allowed. Raises
        `BackendUnavailable`, `RoomFull` or `NodeFull`; nothing is left behind then.
        """
        local, peer = await self._add_local(room, peer_id)
        peer.perms = perms
        try:
            fresh = envelope.join(self.node_id, peer_id, peer.conn, False)
            takeover = envelope.join(self.node_id, peer_id, peer.conn, True)
            others = await self.backend.join(room, peer_id, peer.conn, fresh, takeover,
                                             limit=self.settings.room_max_peers)
        except BaseException:
            await self._drop_local(local, peer)
            raise
        peer.welcome = protocol.welcome_frame(room, peer_id, others, self.node_id)
        log.debug("peer joined", room=room, peer=peer_id, conn=peer.conn)
        return peer

    async def leave(self, peer: Peer) -> None:
        """Remove a peer whose connection is over; announce it unless it was replaced."""
        local = self.rooms.get(peer.room)
        if local is None:
            return
        if local.active.get(peer.id) is peer:
            del local.active[peer.id]
        await peer.stop()
        try:
            if not peer.replaced:
                left = envelope.leave(self.node_id, peer.id, peer.conn)
                await self.backend.leave(peer.room, peer.id, peer.conn, left)
        except BackendUnavailable as exc:
            log.warning("could not remove membership", room=peer.room, peer=peer.id,
                        error=str(exc))
        finally:
            await self._drop_local(local, peer)
        log.debug("peer left", room=peer.room, peer=peer.id, conn=peer.conn)

    async def _add_local(self, room: str, peer_id: str) -> tuple[LocalRoom, Peer]:
        """Register a connection, subscribing first if it is the room's first here."""
        while True:
            local = self.rooms.get(room) or self._new_room(room)
            async with local.lock:
                if self.rooms.get(room) is not local:
                    continue  # the last peer left and the room was dropped while we waited
                if not local.subscribed:
                    try:
                        await self.backend.subscribe(room)
                    except BaseException:
                        self._forget_if_empty(local)
                        raise
                    local.subscribed = True
                peer = self._new_peer(room, peer_id)
                local.conns[peer.conn] = peer
                return local, peer

    async def _drop_local(self, local: LocalRoom, peer: Peer) -> None:
        """Unregister a connection; unsubscribe if it was the room's last here."""
        async with local.lock:
            local.conns.pop(peer.conn, None)
            if local.conns or not local.subscribed:
                return
            local.subscribed = False
            with contextlib.suppress(BackendUnavailable):
                await self.backend.unsubscribe(local.name)
            self._forget_if_empty(local)

    def _new_room(self, room: str) -> LocalRoom:
        limit = self.settings.max_rooms_per_node
        if limit and len(self.rooms) >= limit:
            raise NodeFull(f"this node already hosts {limit} rooms")
        local = self.rooms[room] = LocalRoom(room)
        return local

    def _forget_if_empty(self, local: LocalRoom) -> None:
        if not local.conns and self.rooms.get(local.name) is local:
            del self.rooms[local.name]

    def _new_peer(self, room: str, peer_id: str) -> Peer:
        s = self.settings
        rate = RateLimit(s.rate_limit_per_s, s.rate_limit_burst, s.rate_limit_strikes)
        return Peer(room, peer_id, new_conn_id(), s.send_queue_bytes, rate)

    def close_all(self, code: int, reason: str) -> None:
        """Close every local connection (node shutdown); their handlers then leave."""
        for local in self.rooms.values():
            for peer in local.conns.values():
                peer.close(code, reason)

    # -- frames from clients ---------------------------------------------------------------

    async def handle_text(self, peer: Peer, text: str) -> None:
        """One text frame from `peer`: answer it, or hand it to the backend in order."""
        if not self._within_rate(peer):
            return None
        limit = self.settings.max_frame_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            return self._refuse(peer, ErrorCode.TOO_LARGE, f"frame exceeds {limit} bytes")
        try:
            msg = protocol.parse_frame(text, self.settings.max_json_depth)
        except FrameError as exc:
            return self._refuse(peer, exc.code, exc.message)
        self.stats[f"frames.{msg.type if msg.type in _KNOWN else 'other'}"] += 1
        if msg.type in protocol.RELAY_TYPES:
            assert msg.to is not None
            await self._relay(peer, msg.type, msg.to, msg)
        elif msg.type == "chat":
            if peer.perms is not None and PERM_CHAT not in peer.perms:
                return self._refuse(peer, ErrorCode.FORBIDDEN, "your token does not allow chat")
            frame = protocol.chat_frame(peer.room, peer.id, msg.data)
            await self._submit(peer, self.backend.publish(peer.room, envelope.chat(
                self.node_id, frame)))
        elif msg.type == "ping":
            peer.send(protocol.PONG)
        else:
            self._refuse(peer, ErrorCode.UNKNOWN_TYPE, f"unknown type {msg.type[:64]!r}")

    def handle_binary(self, peer: Peer) -> None:
        if self._within_rate(peer):
            self._refuse(peer, ErrorCode.BAD_MESSAGE,
                         "binary frames are not accepted; send JSON text")

    def _within_rate(self, peer: Peer) -> bool:
        """Every frame counts, bad ones too; past RATE_LIMIT_STRIKES the peer is closed."""
        verdict = peer.rate.check()
        if verdict is Verdict.PASS:
            return True
        if verdict is Verdict.CLOSE:
            if not peer.closing:
                self.stats["closed.rate-limit"] += 1
                log.info("closing flooding peer", room=peer.room, peer=peer.id)
                peer.close(CLOSE_POLICY, "rate limit exceeded")
        else:
            self._refuse(peer, ErrorCode.RATE_LIMITED, "too many frames, slow down")
        return False

    async def _relay(self, peer: Peer, kind: str, to: str, msg: protocol.Inbound) -> None:
        if not is_valid_peer(to):
            return self._refuse(peer, ErrorCode.PEER_NOT_FOUND, f"no peer {to[:64]!r} in room")
        frame = protocol.relay_frame(kind, peer.room, peer.id, to, msg.data)
        await self._submit(peer, self.backend.relay(peer.room, to, envelope.relay(
            self.node_id, to, frame)), to)

    async def _submit(
        self, peer: Peer, call: Awaitable[asyncio.Future[Any]], to: str | None = None
    ) -> None:
        """Await the backend's queueing, then report the outcome to the sender later."""
        try:
            future = await call
        except BackendUnavailable:
            return self._refuse(peer, ErrorCode.UNAVAILABLE, "signaling backend unavailable")
        future.add_done_callback(lambda f: self._report(peer, f, to))

    def _report(self, peer: Peer, future: asyncio.Future[Any], to: str | None) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._refuse(peer, ErrorCode.UNAVAILABLE, "signaling backend unavailable")
        elif to is not None and not future.result():
            self._refuse(peer, ErrorCode.PEER_NOT_FOUND, f"no peer {to!r} in room")

    def _refuse(self, peer: Peer, code: ErrorCode, message: str) -> None:
        self.stats[f"errors.{code}"] += 1
        peer.send(protocol.error_frame(code, message))

    # -- envelopes from the backend, in channel order -------------------------------------

    def on_envelope(self, room: str, payload: bytes) -> None:
        local = self.rooms.get(room)
        if local is None:
            return
        try:
            env = envelope.decode(payload)
        except BadEnvelope as exc:
            self.stats["envelopes.bad"] += 1
            log.warning("dropped undecodable envelope", room=room, error=str(exc),
                        size=len(payload))
            return
        if isinstance(env, Relay):
            target = local.active.get(env.to)
            if target is not None:
                target.send(env.frame)
        elif isinstance(env, Chat):
            for target in local.active.values():
                target.send(env.frame)
        elif isinstance(env, Join):
            self._on_join(local, env)
        elif isinstance(env, Leave):
            self._on_leave(local, env)

    def _on_join(self, local: LocalRoom, env: Join) -> None:
        old = local.active.get(env.peer)
        if old is not None and old.conn != env.conn:
            del local.active[env.peer]
            old.replaced = True
            old.close(CLOSE_REPLACED, "replaced by a newer connection")
        frames = [protocol.notice_frame("new-peer", local.name, env.peer)]
        if env.takeover:
            frames.insert(0, protocol.notice_frame("peer-left", local.name, env.peer))
        for target in local.active.values():
            for frame in frames:
                target.send(frame)
        joiner = local.conns.get(env.conn) if env.node == self.node_id else None
        if joiner is not None and not joiner.closing:
            local.active[env.peer] = joiner

    def _on_leave(self, local: LocalRoom, env: Leave) -> None:
        gone = local.active.get(env.peer)
        if gone is not None and gone.conn == env.conn:
            del local.active[env.peer]
        frame = protocol.notice_frame("peer-left", local.name, env.peer)
        for target in local.active.values():
            target.send(frame)


_KNOWN = frozenset({"offer", "answer", "ice", "chat", "ping"})
