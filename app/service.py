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
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import structlog

from app import envelope, protocol
from app.backend import Backend, BackendUnavailable
from app.config import Settings
from app.envelope import BadEnvelope, Chat, Join, Kick, Leave, Relay
from app.ice import IceServers
from app.ids import is_valid_peer, new_conn_id
from app.limits import TokenBucket
from app.metrics import OK, NodeMetrics
from app.peer import Peer
from app.protocol import ErrorCode, FrameError

log = structlog.get_logger(__name__)

CLOSE_REPLACED = 4001
CLOSE_KICKED = 4002  # an operator kicked the peer (admin API)
CLOSE_ROOM_CLOSED = 4003  # an operator closed the room (admin API)
CLOSE_GOING_AWAY = 1001


@dataclass(eq=False)
class LocalRoom:
    """This node's share of one room: its connections and the channel subscription."""

    name: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conns: dict[str, Peer] = field(default_factory=dict)  # every local connection, by conn id
    active: dict[str, Peer] = field(default_factory=dict)  # receiving frames, by peer id
    subscribed: bool = False


class SignalingService:
    def __init__(self, backend: Backend, settings: Settings,
                 metrics: NodeMetrics | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.node_id = backend.node_id
        self.rooms: dict[str, LocalRoom] = {}
        self.metrics = metrics if metrics is not None else NodeMetrics(self.node_id)
        self.metrics.watch(
            peers=lambda: sum(len(local.conns) for local in self.rooms.values()),
            rooms=lambda: len(self.rooms),
            subscriptions=lambda: sum(local.subscribed for local in self.rooms.values()),
            ready=lambda: backend.ready,
        )
        self.ice = IceServers.from_settings(settings)

    # -- joining and leaving -------------------------------------------------------------

    async def join(self, room: str, peer_id: str) -> Peer:
        """Add a peer to the room (before the upgrade, so refusals are plain HTTP).

        Raises `BackendUnavailable` or `RoomFull`; nothing is left behind then.
        """
        local, peer = await self._add_local(room, peer_id)
        try:
            fresh = envelope.join(self.node_id, peer_id, peer.conn, False)
            takeover = envelope.join(self.node_id, peer_id, peer.conn, True)
            others = await self.backend.join(room, peer_id, peer.conn, fresh, takeover)
        except BaseException:
            await self._drop_local(local, peer)
            raise
        peer.welcome = protocol.welcome_frame(room, peer_id, others, self.node_id,
                                              self.ice.welcome_data(peer_id))
        self.metrics.connections.inc()
        log.debug("peer joined", room=room, peer=peer_id, conn=peer.conn)
        return peer

    async def leave(self, peer: Peer) -> None:
        """Remove a peer whose connection is over; announce it unless it was replaced."""
        local = self.rooms.get(peer.room)
        if local is None:
            return
        if local.active.get(peer.id) is peer:
            del local.active[peer.id]
        if peer.overflowed:
            self.metrics.queue_overflows.inc()
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
            local = self.rooms.setdefault(room, LocalRoom(room))
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

    def _forget_if_empty(self, local: LocalRoom) -> None:
        if not local.conns and self.rooms.get(local.name) is local:
            del self.rooms[local.name]

    def _new_peer(self, room: str, peer_id: str) -> Peer:
        s = self.settings
        bucket = TokenBucket(s.rate_limit_per_s, s.rate_limit_burst)
        return Peer(room, peer_id, new_conn_id(), s.send_queue_bytes, bucket)

    async def kick(self, room: str, peer: str | None, code: int, reason: str) -> None:
        """Close `peer`'s connections (None: the whole room's) on whichever nodes hold them.

        The kick travels on the room channel, so every node hosting the room acts on it in
        order; each closes its own connections, whose leave then announces `peer-left`.
        """
        sent = await self.backend.publish(room, envelope.kick(self.node_id, peer, code, reason))
        await sent

    def close_all(self, code: int, reason: str) -> None:
        """Close every local connection (node shutdown); their handlers then leave."""
        for local in self.rooms.values():
            for peer in local.conns.values():
                peer.close(code, reason)

    # -- frames from clients ---------------------------------------------------------------

    async def handle_text(self, peer: Peer, text: str) -> None:
        """One text frame from `peer`: answer it, or hand it to the backend in order."""
        limit = self.settings.max_frame_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            return self._refuse(peer, ErrorCode.TOO_LARGE, f"frame exceeds {limit} bytes")
        if not peer.bucket.take():
            return self._refuse(peer, ErrorCode.RATE_LIMITED, "too many frames, slow down")
        try:
            msg = protocol.parse_frame(text)
        except FrameError as exc:
            return self._refuse(peer, exc.code, exc.message)
        if msg.type in protocol.RELAY_TYPES:
            assert msg.to is not None
            await self._relay(peer, msg.type, msg.to, msg)
        elif msg.type == "chat":
            frame = protocol.chat_frame(peer.room, peer.id, msg.data)
            await self._submit(peer, "chat", self.backend.publish(peer.room, envelope.chat(
                self.node_id, frame)))
        elif msg.type == "ping":
            peer.send(protocol.PONG)
            self.metrics.frame("ping", OK)
        else:
            self._refuse(peer, ErrorCode.UNKNOWN_TYPE, f"unknown type {msg.type[:64]!r}",
                         "other")

    def handle_binary(self, peer: Peer) -> None:
        self._refuse(peer, ErrorCode.BAD_MESSAGE, "binary frames are not accepted; send JSON text",
                     "binary")

    async def _relay(self, peer: Peer, kind: str, to: str, msg: protocol.Inbound) -> None:
        if not is_valid_peer(to):
            return self._refuse(peer, ErrorCode.PEER_NOT_FOUND, f"no peer {to[:64]!r} in room",
                                kind)
        frame = protocol.relay_frame(kind, peer.room, peer.id, to, msg.data)
        await self._submit(peer, kind, self.backend.relay(peer.room, to, envelope.relay(
            self.node_id, to, frame)), to)

    async def _submit(self, peer: Peer, kind: str, call: Awaitable[asyncio.Future[Any]],
                      to: str | None = None) -> None:
        """Await the backend's queueing, then report the outcome to the sender later."""
        try:
            future = await call
        except BackendUnavailable:
            return self._refuse(peer, ErrorCode.UNAVAILABLE, "signaling backend unavailable",
                                kind)
        future.add_done_callback(lambda f: self._report(peer, kind, f, to))

    def _report(self, peer: Peer, kind: str, future: asyncio.Future[Any], to: str | None
                ) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._refuse(peer, ErrorCode.UNAVAILABLE, "signaling backend unavailable", kind)
        elif to is not None and not future.result():
            self._refuse(peer, ErrorCode.PEER_NOT_FOUND, f"no peer {to!r} in room", kind)
        else:
            self.metrics.frame(kind, OK)

    def _refuse(self, peer: Peer, code: ErrorCode, message: str, kind: str = "invalid") -> None:
        """Answer a frame with an error; `kind` is its type for metrics (invalid: unknown)."""
        self.metrics.frame(kind, code)
        self.metrics.error(code)
        peer.send(protocol.error_frame(code, message))

    # -- envelopes from the backend, in channel order -------------------------------------

    def on_envelope(self, room: str, payload: bytes) -> None:
        local = self.rooms.get(room)
        if local is None:
            return
        try:
            env = envelope.decode(payload)
        except BadEnvelope as exc:
            self.metrics.bad_envelope()
            log.warning("dropped undecodable envelope", room=room, error=str(exc),
                        size=len(payload))
            return
        self.metrics.envelope(_KIND[type(env)])
        if isinstance(env, Relay):
            target = local.active.get(env.to)
            if target is not None:
                target.send(env.frame)
                self.metrics.delivered("relay", env.node != self.node_id, env.sent)
        elif isinstance(env, Chat):
            for target in local.active.values():
                target.send(env.frame)
            if local.active:
                self.metrics.delivered("chat", env.node != self.node_id, env.sent)
        elif isinstance(env, Join):
            self._on_join(local, env)
        elif isinstance(env, Leave):
            self._on_leave(local, env)
        elif isinstance(env, Kick):
            self._on_kick(local, env)

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

    def _on_kick(self, local: LocalRoom, env: Kick) -> None:
        """Close this node's connections of the kicked peer (all of them: a closed room)."""
        for peer in list(local.conns.values()):
            if env.peer is None or peer.id == env.peer:
                self.metrics.kicks.inc()
                peer.close(env.code, env.reason)


_KIND: dict[type, str] = {Join: "j", Leave: "l", Relay: "r", Chat: "c", Kick: "k"}
