"""The signaling service: rooms, peers and the rules of contract §1 and §3.

It knows nothing of Redis or of HTTP. Joins, leaves, relays and chats go to the backend,
and come back, in channel order, through `on_envelope`. What a client is told depends
only on its position in that order (see `rooms.LocalRoom.joined`), and each client keeps
the set of peers it was told about, so no announcement reaches it twice even when an
outage makes the cluster repeat one.

While the backend is down the node keeps serving what it can alone: frames between its
own peers are delivered directly, the rest are answered `unavailable`, and leaves are
remembered so they can be announced once the backend is back (`repair.py`).

Session resume (contract §6): a connection that ends without the client's close or a close
the node decided on is held (`held.py`) for RESUME_SECONDS, what it hears kept in its
backlog; `resume` on any node takes the membership over, in channel order, so that the old
holder keeps everything before the resume envelope and the new connection everything after.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from app.core import envelope, protocol
from app.core.closes import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_REPLACED
from app.core.envelope import BadEnvelope, Chat, Handed, Join, Kick, Leave, Relay, Resume, Sync
from app.core.held import Held
from app.core.ids import new_conn_id
from app.core.limits import Verdict
from app.core.member import Member, MemberFactory
from app.core.ports import Backend, BackendUnavailable, Meter
from app.core.protocol import OK, PERM_CHAT, ErrorCode, FrameError
from app.core.repair import Repair
from app.core.rooms import LocalRoom
from app.core.rules import Rules

log = structlog.get_logger(__name__)


_KIND: dict[type, str] = {Join: "j", Leave: "l", Relay: "r", Chat: "c", Kick: "k", Sync: "s",
                          Resume: "u", Handed: "h"}

HANDOVER_SECONDS = 2.0  # a resume waits this long for the old holder's backlog


def new_resume_token() -> str:
    """128 random bits, URL-safe (it travels as `?resume=`)."""
    return secrets.token_urlsafe(16)


def token_digest(token: str) -> str:
    """What the backend keeps: a reader of Redis cannot resume someone else's session."""
    return hashlib.sha256(token.encode()).hexdigest()


class NodeFull(Exception):
    """This node already hosts MAX_ROOMS_PER_NODE rooms; another node may take the peer."""


class SignalingService:
    def __init__(self, backend: Backend, rules: Rules, metrics: Meter,
                 new_member: MemberFactory) -> None:
        self.backend = backend
        self.rules = rules
        self.node_id = backend.node_id
        self.rooms: dict[str, LocalRoom] = {}
        self.metrics = metrics
        self._new_member = new_member
        self.metrics.watch(
            peers=lambda: sum(len(local.conns) for local in self.rooms.values()) - self.held(),
            rooms=lambda: len(self.rooms),
            subscriptions=lambda: sum(local.subscribed for local in self.rooms.values()),
            ready=lambda: backend.ready,
            held=lambda: self.held(),
        )
        self.draining = False
        self.repair = Repair(self.rooms, backend)
        # Drain and shutdown wait for conditions on what is left here (`_until`).
        self._waiters: list[tuple[Callable[[], bool], asyncio.Event]] = []
        self._closing_at = 0.0  # Unix time of the first close_all: holds it made are newer
        # Resume is on when configured and the backend keeps backlogs (every one here does).
        self.resume_seconds = rules.resume_seconds if backend.resumable else 0.0
        self._held: set[Held] = set()
        self._handovers: dict[str, asyncio.Future[tuple[str, ...]]] = {}  # by resuming conn
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_by: float | None = None  # loop time the closing of all peers waits until
        if rules.resume_seconds and not backend.resumable:
            log.warning("this backend keeps no resume backlogs: RESUME_SECONDS is ignored",
                        backend=type(backend).__name__)

    @property
    def ready(self) -> bool:
        return self.backend.ready and not self.draining

    # -- joining and leaving -------------------------------------------------------------

    async def join(self, room: str, peer_id: str, perms: frozenset[str] | None = None) -> Member:
        """Add a peer to the room (before the upgrade, so refusals are plain HTTP).

        `perms` None means no token auth: everything is allowed. Raises
        `BackendUnavailable`, `RoomFull` or `NodeFull`; nothing is left behind then.
        """
        local, peer = await self._add_local(room, peer_id)
        peer.perms = perms
        token = new_resume_token() if self.resume_seconds else ""
        try:
            fresh = envelope.join(self.node_id, peer_id, peer.conn, False)
            takeover = envelope.join(self.node_id, peer_id, peer.conn, True)
            others = await self.backend.join(room, peer_id, peer.conn, fresh, takeover,
                                             limit=self.rules.room_max_peers,
                                             token=token_digest(token) if token else "")
        except BaseException:
            if local.active.get(peer_id) is peer:  # its join envelope came back: undo that
                del local.active[peer_id]
            await self._drop_local(local, peer)
            raise
        peer.learn_snapshot(others)
        peer.welcome = self._welcome(peer, others, token, resumed=False)
        self.metrics.connections.inc()
        log.debug("peer joined", room=room, peer=peer_id, conn=peer.conn)
        return peer

    def _welcome(self, peer: Member, others: list[str], token: str, resumed: bool) -> bytes:
        extra = self.rules.ice.welcome_data(peer.id)
        if token:
            extra = {**extra, "resume": token, "resumed": resumed}
        return protocol.welcome_frame(peer.room, peer.id, others, self.node_id, extra)

    async def resume(self, room: str, peer_id: str, token: str,
                     perms: frozenset[str] | None = None) -> Member | None:
        """Take over a held (or still connected) session with its newest token (§6).

        None if the token is not the membership's newest (stale, wrong, expired, or the
        backlog overflowed): the caller joins as usual. Otherwise the member gets its
        backlog, then what was sent after the resume, and a welcome with `resumed: true`.
        """
        if not self.resume_seconds:
            return None
        local, peer = await self._add_local(room, peer_id)
        peer.perms = perms
        fresh = new_resume_token()
        waiter = asyncio.get_running_loop().create_future()
        self._handovers[peer.conn] = waiter
        try:
            done = await self.backend.resume(
                room, peer_id, peer.conn, token_digest(token), token_digest(fresh),
                envelope.resume(self.node_id, peer_id, peer.conn))
            if done is None:
                await self._drop_local(local, peer)
                return None
            known: tuple[str, ...] | None = None
            if done.listening:  # the old holder writes the rest of the backlog, then says so
                try:
                    known = await asyncio.wait_for(waiter, HANDOVER_SECONDS)
                except TimeoutError:
                    log.warning("no hand-over from the old node", room=room, peer=peer_id,
                                node=done.holder)
            backlog = await self.backend.take_backlog(room, peer_id)
        except BaseException:
            if local.active.get(peer_id) is peer:
                del local.active[peer_id]
            await self._drop_local(local, peer)
            raise
        finally:
            self._handovers.pop(peer.conn, None)
        for frame in backlog:  # before what came live since the resume (waiting in `_early`)
            peer.send(frame)
        peer.learn_snapshot(known if known is not None else done.peers)
        peer.welcome = self._welcome(peer, done.peers, fresh, resumed=True)
        self.metrics.connections.inc()
        log.info("peer resumed", room=room, peer=peer_id, conn=peer.conn, holder=done.holder,
                 backlog=len(backlog), handed=known is not None)
        return peer

    async def leave(self, peer: Member) -> Held | None:
        """Remove a peer whose connection is over; announce it unless it was replaced.

        A connection that may resume is held instead (nobody is told): returns the hold."""
        local = self.rooms.get(peer.room)
        if local is None:
            return None
        if (self.resume_seconds and peer.resumable and not peer.replaced
                and peer.known is not None and self.backend.ready
                and local.conns.get(peer.conn) is peer):
            return self._hold(local, peer)
        if local.active.get(peer.id) is peer:
            del local.active[peer.id]
        if peer.overflowed:
            self.metrics.queue_overflows.inc()
        try:
            if peer.replaced:
                await self._release(peer)
            else:
                await self._announce_leave(local, peer)
        finally:
            await self._drop_local(local, peer)
        log.debug("peer left", room=peer.room, peer=peer.id, conn=peer.conn)
        return None

    async def _announce_leave(self, local: LocalRoom, peer: Member) -> None:
        left = envelope.leave(self.node_id, peer.id, peer.conn)
        try:
            if not self.backend.ready:
                raise BackendUnavailable("backend down")
            await self.backend.leave(peer.room, peer.id, peer.conn, left)
        except BackendUnavailable:
            # Tell this node's peers now; the cluster hears it once the backend is back.
            local.left(peer.id)
            self.repair.leave_later(peer.room, peer.id, peer.conn)

    # -- holding a session for resume (contract §6) ---------------------------------------

    def _hold(self, local: LocalRoom, peer: Member) -> Held:
        held = self._new_held(peer)
        local.conns[held.conn] = held
        if local.active.get(peer.id) is peer:
            local.active[peer.id] = held
        self._held.add(held)
        held.timer = asyncio.get_running_loop().call_later(
            self.resume_seconds, self.end_hold, held, True)
        log.debug("peer held for resume", room=peer.room, peer=peer.id, conn=peer.conn)
        self._changed()
        return held

    def _new_held(self, old: Member) -> Held:
        """A hold in `old`'s place, starting with what `old` never got to write."""
        held = Held(old, self.rules.resume_backlog, self.rules.resume_backlog_bytes, self)
        for frame in old.unsent():
            held.send(frame)
        return held

    def write_backlog(self, held: Held) -> None:
        if held.writer is None:
            held.writer = self._spawn(self._write_backlog(held), f"backlog:{held.id}")

    async def _write_backlog(self, held: Held) -> None:
        """One writer per held member: the backlog, in order, then the hand-over."""
        try:
            while not held.ended:
                frames = held.take()
                if frames:
                    ttl = self.resume_seconds + HANDOVER_SECONDS + 5
                    await (await self.backend.stash(held.room, held.id, frames, ttl))
                elif held.handing_to is not None:
                    await (await self.backend.publish(held.room, envelope.handed(
                        self.node_id, held.id, held.handing_to, sorted(held.known or ()))))
                    held.ended = True
                    self._forget_held(held)
                    await self._release(held)  # what a backend files per node (cluster)
                    local = self.rooms.get(held.room)
                    if local is not None:
                        await self._drop_local(local, held)
                else:
                    return
        except BackendUnavailable:
            log.warning("backlog lost with the backend: ending the hold", room=held.room,
                        peer=held.id)
            held.writer = None
            self.end_hold(held, announce=True)
        finally:
            if held.writer is asyncio.current_task():
                held.writer = None

    def end_hold(self, held: Held, announce: bool) -> None:
        if not held.ended and held.handing_to is None:
            held.ended = True
            self._spawn(self._end_hold(held, announce), f"unhold:{held.id}")

    async def _end_hold(self, held: Held, announce: bool) -> None:
        self._forget_held(held)
        if held.writer is not None:  # its last write first, so the leave deletes it all
            with contextlib.suppress(Exception):
                await held.writer
        local = self.rooms.get(held.room)
        if local is None:
            return
        if local.active.get(held.id) is held:
            del local.active[held.id]
        try:
            if announce:
                await self._announce_leave(local, held)
            else:
                await self._release(held)
        finally:
            await self._drop_local(local, held)
        log.debug("hold ended", room=held.room, peer=held.id, announced=announce,
                  frames=held.count)

    def _forget_held(self, held: Held) -> None:
        self._held.discard(held)
        self._changed()
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        release, held.release = held.release, None
        if release is not None:
            release()

    def _hand_over(self, local: LocalRoom, old: Member, conn: str) -> None:
        """The session moved to `conn`: finish `old`'s backlog, then publish `handed`."""
        if isinstance(old, Held):
            held = old
        else:  # still connected here (its client noticed the loss first): take it over
            held = self._new_held(old)
            old.replaced = True
            old.close(CLOSE_REPLACED, "resumed on another connection")
            local.conns[held.conn] = held
            self._held.add(held)
        if held.ended:
            return
        if held.timer is not None:  # it stays in `_held` (a drain waits) until `handed` is out
            held.timer.cancel()
            held.timer = None
        held.handing_to = conn
        self.write_backlog(held)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start(self) -> None:
        """Once the backend is up: end what an earlier run of this node left behind."""
        self._spawn(self._end_leftovers(), "leftovers")

    async def _end_leftovers(self) -> None:
        """Memberships filed under this node id at start belong to an earlier run of it
        (a restart, or a crash and a quick restart, with the same NODE_ID): no sweep takes
        them while this node lives, so it does, once their resume grace is over. A session
        resumed elsewhere meanwhile has another owner, and is left alone."""
        if not self.backend.ready:
            return  # the repair after the reconnect removes them
        try:
            leftovers = await self.backend.memberships()
        except Exception as exc:  # the backend's own errors: it was lost meanwhile
            log.warning("could not read this node's earlier memberships", error=repr(exc))
            return
        if not leftovers:
            return
        log.info("memberships of an earlier run of this node", count=len(leftovers))
        await asyncio.sleep(self.resume_seconds)
        for room, peer, conn in leftovers:
            owner = conn or "gone"
            with contextlib.suppress(BackendUnavailable):
                await self.backend.leave(room, peer, owner,
                                         envelope.leave(self.node_id, peer, owner))

    def held(self) -> int:
        """Sessions held for resume on this node right now."""
        return len(self._held)

    def close(self) -> float | None:
        """At shutdown: holds still open stay in the backend (the sweep of dead nodes
        ends them after the grace, unless they resume elsewhere first). Returns when the
        oldest of them was lost (None: none), for `Backend.stop`."""
        since = min((held.since for held in self._held), default=None)
        for held in list(self._held):
            self._forget_held(held)
        for task in self._tasks:
            task.cancel()
        return since

    async def _release(self, peer: Member) -> None:
        """A replaced connection owns no membership, so its leave publishes nothing; it
        lets a backend drop what it files per node (a cluster's node index entry)."""
        left = envelope.leave(self.node_id, peer.id, peer.conn)
        with contextlib.suppress(BackendUnavailable):
            await self.backend.leave(peer.room, peer.id, peer.conn, left)

    async def _add_local(self, room: str, peer_id: str) -> tuple[LocalRoom, Member]:
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

    async def _drop_local(self, local: LocalRoom, peer: Member) -> None:
        """Unregister a connection; unsubscribe if it was the room's last here."""
        async with local.lock:
            if local.conns.get(peer.conn) is peer:  # not a hold that took its place
                del local.conns[peer.conn]
            self._changed()
            if local.conns or not local.subscribed:
                return
            local.subscribed = False
            with contextlib.suppress(BackendUnavailable):
                await self.backend.unsubscribe(local.name)
            self._forget_if_empty(local)

    def _new_room(self, room: str) -> LocalRoom:
        limit = self.rules.max_rooms_per_node
        if limit and len(self.rooms) >= limit:
            raise NodeFull(f"this node already hosts {limit} rooms")
        local = self.rooms[room] = LocalRoom(room)
        return local

    def _forget_if_empty(self, local: LocalRoom) -> None:
        if not local.conns and self.rooms.get(local.name) is local:
            del self.rooms[local.name]

    def _no_connections(self) -> bool:
        """Nothing left to serve: every member here is a session held for resume."""
        return all(isinstance(m, Held) for local in self.rooms.values()
                   for m in local.conns.values())

    def _settled(self) -> bool:
        """No connection left, and every session the closing held has resumed elsewhere
        (sessions lost before it are not waited for: their clients went earlier)."""
        return self._no_connections() and not any(
            held.since >= self._closing_at for held in self._held)

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds; it is looked at whenever a member goes."""
        if condition():
            return
        event = asyncio.Event()
        self._waiters.append((condition, event))
        try:
            await event.wait()
        finally:
            self._waiters.remove((condition, event))

    def _changed(self) -> None:
        for condition, event in self._waiters:
            if condition():
                event.set()

    def _new_peer(self, room: str, peer_id: str) -> Member:
        return self._new_member(room, peer_id, new_conn_id(), self.rules.rate.new())

    def peers(self) -> list[Member]:
        return [peer for local in self.rooms.values() for peer in local.conns.values()]

    async def kick(self, room: str, peer: str | None, code: int, reason: str) -> None:
        """Close `peer`'s connections (None: the whole room's) on whichever nodes hold them.

        The kick travels on the room channel, so every node hosting the room acts on it in
        order; each closes its own connections, whose leave then announces `peer-left`.
        """
        sent = await self.backend.publish(room, envelope.kick(self.node_id, peer, code, reason))
        await sent

    async def close_all(self, code: int, reason: str, within: float = 4) -> None:
        """Close every local connection and wait (at most `within` seconds) until each
        connection's end has made its peer leave. Sessions held for resume have no
        connection: they stay held (a drain must not announce them)."""
        loop = asyncio.get_running_loop()
        if self._close_by is None:  # a drain, then the shutdown: one wait in all
            self._close_by = loop.time() + within
            self._closing_at = time.time()
        for peer in self.peers():
            if not isinstance(peer, Held):
                peer.close(code, reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._until(self._settled),
                                   max(0.0, self._close_by - loop.time()))

    async def drain(self, seconds: float, now: asyncio.Event) -> None:
        """Refuse new peers at once; after `seconds` (or when `now` is set) close the rest.

        Clients closed with 1001 reconnect through the load balancer to another node (and
        resume there). A node without connections (held sessions have none), or whose last
        one ends meanwhile, has nothing to wait for: new upgrades are refused already, so it
        stops at once.
        """
        self.draining = True
        self.metrics.set_draining(True)
        log.info("draining", seconds=seconds, peers=len(self.peers()))
        waits = [asyncio.ensure_future(now.wait()),
                 asyncio.ensure_future(self._until(self._no_connections))]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        await self.close_all(CLOSE_GOING_AWAY, "node shutting down")

    # -- frames from clients ---------------------------------------------------------------

    async def handle_text(self, peer: Member, text: str) -> None:
        """One text frame from `peer`: answer it, or hand it to the backend in order."""
        if not self._within_rate(peer, len(text)):
            return None
        limit = self.rules.max_frame_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            return self._refuse(peer, ErrorCode.TOO_LARGE, f"frame exceeds {limit} bytes")
        try:
            msg = protocol.parse_frame(text, self.rules.max_json_depth)
        except FrameError as exc:
            return self._refuse(peer, exc.code, exc.message)
        if msg.type in protocol.RELAY_TYPES:
            assert msg.to is not None
            await self._relay(peer, msg.type, msg.to, msg.data)
        elif msg.type == "chat":
            if peer.perms is not None and PERM_CHAT not in peer.perms:
                return self._refuse(peer, ErrorCode.FORBIDDEN, "your token does not allow chat",
                                    "chat")
            await self._chat(peer, protocol.chat_frame(peer.room, peer.id, msg.data))
        elif msg.type == "ping":
            peer.send(protocol.PONG)
            self.metrics.frame("ping", OK)
        else:
            self._refuse(peer, ErrorCode.UNKNOWN_TYPE, f"unknown type {msg.type[:64]!r}",
                         "other")

    def handle_binary(self, peer: Member) -> None:
        if self._within_rate(peer):
            self._refuse(peer, ErrorCode.BAD_MESSAGE,
                         "binary frames are not accepted; send JSON text", "binary")

    def handle_control(self, peer: Member) -> bool:
        """A ping or pong from the client counts like any frame (no answer when refused:
        control frames get none); True if it may be answered."""
        return self._within_rate(peer, 0, answer=False)

    def _within_rate(self, peer: Member, size: int = 0, answer: bool = True) -> bool:
        """Every frame counts, bad ones and control frames too, and so do its bytes; past
        RATE_LIMIT_STRIKES the peer is closed."""
        verdict = peer.rate.check(size)
        if verdict is Verdict.PASS:
            return True
        if verdict is Verdict.CLOSE:
            if not peer.closing:
                self.metrics.rate_limit_closes.inc()
                log.info("closing flooding peer", room=peer.room, peer=peer.id)
                peer.close(CLOSE_POLICY, "rate limit exceeded")
        elif answer:
            self._refuse(peer, ErrorCode.RATE_LIMITED,
                         "too many frames or bytes per second, slow down")
        return False

    async def _relay(self, peer: Member, kind: str, to: str, data: Any) -> None:
        """`to` must be a peer the sender was told of (its welcome, then `new-peer` and
        `peer-left`, in channel order), or itself: that answers `peer-not-found` without a
        round trip to Redis, and the relay is one PUBLISH. A peer that has just left and
        whose `peer-left` is still on its way misses the frame, as it would a moment later."""
        if to != peer.id and (peer.known is None or to not in peer.known):
            return self._refuse(peer, ErrorCode.PEER_NOT_FOUND, f"no peer {to[:64]!r} in room",
                                kind)
        frame = protocol.relay_frame(kind, peer.room, peer.id, to, data)
        if not self.backend.ready:  # alone: only this node's peers can be reached
            local = self.rooms.get(peer.room)
            if local is None or not local.relay(to, frame):
                self._refuse(peer, ErrorCode.UNAVAILABLE, "signaling backend unavailable", kind)
            return
        env = envelope.relay(self.node_id, to, frame)
        await self._submit(peer, kind, self.backend.publish(peer.room, env))

    async def _chat(self, peer: Member, frame: bytes) -> None:
        if not self.backend.ready:
            local = self.rooms.get(peer.room)
            if local is not None:
                local.chat(frame)
                if not local.remote_peers(peer):
                    return
            return self._refuse(peer, ErrorCode.UNAVAILABLE,
                                "signaling backend unavailable: peers on other nodes missed it",
                                "chat")
        await self._submit(peer, "chat", self.backend.publish(peer.room, envelope.chat(
            self.node_id, frame)))

    async def _submit(self, peer: Member, kind: str, call: Awaitable[asyncio.Future[Any]]
                      ) -> None:
        """Await the backend's queueing, then report the outcome to the sender later."""
        try:
            future = await call
        except BackendUnavailable:
            return self._refuse(peer, ErrorCode.UNAVAILABLE, "signaling backend unavailable",
                                kind)
        future.add_done_callback(lambda f: self._report(peer, kind, f))

    def _report(self, peer: Member, kind: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            self._refuse(peer, ErrorCode.UNAVAILABLE, "signaling backend unavailable", kind)
        else:
            self.metrics.frame(kind, OK)

    def _refuse(self, peer: Member, code: ErrorCode, message: str, kind: str = "invalid") -> None:
        """Answer a frame with an error; `kind` is its type for metrics (invalid: unknown)."""
        self.metrics.frame(kind, code)
        self.metrics.error(code)
        peer.send(protocol.error_frame(code, message))

    # -- what the backend reports (BackendEvents) ------------------------------------------

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
            if local.relay(env.to, env.frame):
                self.metrics.delivered("relay", env.node != self.node_id, env.sent)
        elif isinstance(env, Chat):
            if local.active:
                local.chat(env.frame)
                self.metrics.delivered("chat", env.node != self.node_id, env.sent)
        elif isinstance(env, Join):
            local.joined(self.node_id, env)
        elif isinstance(env, Leave):
            local.left(env.peer)
        elif isinstance(env, Resume):
            old = local.resumed(self.node_id, env)
            if old is not None:
                self._hand_over(local, old, env.conn)
        elif isinstance(env, Handed):
            waiter = self._handovers.get(env.conn)
            if waiter is not None and not waiter.done():
                waiter.set_result(env.known)
        elif isinstance(env, Sync) and env.node == self.node_id:
            for target in local.active.values():
                target.resync(env.members, room)
        elif isinstance(env, Kick):
            for peer in list(local.conns.values()):  # all of them: a closed room
                if env.peer is None or peer.id == env.peer:
                    self.metrics.kicks.inc()
                    peer.close(env.code, env.reason)

    def on_lost(self) -> None:
        log.warning("backend lost: serving local peers only", rooms=len(self.rooms))

    async def on_recovered(self) -> None:
        await self.repair.run()
