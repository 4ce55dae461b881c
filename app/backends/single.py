"""Redis backend: membership in sets, envelopes on per-room pub/sub channels (contract §2).

One Redis, or the master that Sentinel names (`redis+sentinel://`, see `app/config/redisurl.py`):
after a failover the connections break, the supervisor (`supervisor.py`) reconnects to the
new master and the node repairs memberships as after any outage. On top of the shared
lifecycle this backend has:
- the ordered wire: every command that publishes (see `wire.py`);
- the subscriber: one pub/sub connection for all rooms this node hosts;
- Lua scripts that change a membership, the node index, `sig:rooms` and the events stream
  and publish, in one atomic step (`scripts.py`).
A Redis Cluster is `cluster/backend.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from redis.asyncio import Redis

from app.backends.rediswire import scripts
from app.backends.rediswire.clients import client_from_url, close_client
from app.backends.rediswire.keys import Keys
from app.backends.rediswire.reaping import AtomicReaper
from app.backends.rediswire.subscriber import Subscriber
from app.backends.rediswire.supervisor import FAILURES, SupervisedBackend
from app.backends.rediswire.wire import RedisWire
from app.core import envelope
from app.core.ports import BackendEvents, BackendUnavailable, Rejoin, Resumed, RoomFull

log = structlog.get_logger(__name__)

__all__ = ["RedisBackend", "client_from_url"]


class RedisBackend(SupervisedBackend):
    resumable = True

    def __init__(self, client: Redis, node_id: str, keys: Keys, node_ttl: float = 4.0,
                 events_maxlen: int = 0, grace: float = 0.0) -> None:
        super().__init__(client, node_id, keys, node_ttl,
                         AtomicReaper(client, keys, events_maxlen, grace), grace)
        self._client = client
        self._events_maxlen = events_maxlen  # 0: append no room events (nobody consumes them)
        on_error = lambda: self.observer.backend_error("command")  # noqa: E731
        self._pipe = RedisWire(client, self._signal_lost, on_error)
        self._subscriber: Subscriber | None = None
        # Listened on while the node runs: a resume elsewhere learns from PUBLISH's count
        # whether this node will hand a backlog over. Its messages name no room.
        self._channels[keys.node_channel(node_id).encode()] = ""

    async def start(self, events: BackendEvents) -> None:
        self._spawn(self._pipe.run(), "redis-pipe")
        await super().start(events)

    async def _connect(self) -> None:
        """Scripts, liveness key, pub/sub connection with every room resubscribed."""
        await scripts.load_all(self._client)
        await self._beat(claim=True)
        if all(reader.done() for reader in self._readers):
            if self._subscriber is not None:
                await self._subscriber.close()
            subscriber = Subscriber(self._client.connection_pool, self._on_message)
            await subscriber.connect()
            self._subscriber = subscriber
            self._read(subscriber, "redis-subscriber")
            await subscriber.subscribe(list(self._channels))
        await self._pipe.connect()
        self._pipe.open()

    def _drop(self, reason: str) -> None:
        self._pipe.close(reason)

    async def _close(self) -> None:
        await self._pipe.aclose()
        if self._subscriber is not None:
            await self._subscriber.close()
        with contextlib.suppress(*FAILURES):
            await close_client(self._client)

    # -- pub/sub ---------------------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        if not self._up or self._subscriber is None:
            raise BackendUnavailable("redis is unreachable")
        channel = self.keys.room_channel(room).encode()
        self._channels[channel] = room
        try:
            await self._subscriber.subscribe([channel])
        except BaseException:
            self._channels.pop(channel, None)  # not resubscribed after a reconnect either
            raise

    async def unsubscribe(self, room: str) -> None:
        channel = self.keys.room_channel(room).encode()
        if self._channels.pop(channel, None) is None or self._subscriber is None:
            return
        if self._up:
            await self._subscriber.unsubscribe(channel)

    # -- membership and publishing ---------------------------------------------------------

    def _room_keys(self, room: str) -> tuple[str, ...]:
        k = self.keys
        return (k.room_peers(room), k.room_conns(room), k.rooms, k.node_peers(self.node_id),
                k.events, k.room_resume(room), k.node(self.node_id))

    async def _script(self, script: scripts.Script, room: str, *args: Any) -> Any:
        future = await self._pipe.submit("EVALSHA", script.sha, 7, *self._room_keys(room),
                                         room, *args)
        return await future

    async def join(
        self, room: str, peer: str, conn: str, fresh: bytes, takeover: bytes, limit: int = 0,
        token: str = "",
    ) -> list[str]:
        members = await self._script(
            scripts.JOIN, room, peer, self._owner(conn), self.keys.room_channel(room), fresh,
            takeover, limit, *self.keys.node_peers_parts(), self._events_maxlen, token,
            self.keys.backlog(room, peer))
        if members is None:
            raise RoomFull(room)
        return [m.decode() for m in members if m != peer.encode()]

    async def leave(
        self, room: str, peer: str, conn: str, envelope: bytes, announce_absent: bool = False
    ) -> bool:
        done = await self._script(scripts.LEAVE, room, peer, self._owner(conn),
                                  self.keys.room_channel(room), envelope, int(announce_absent),
                                  self._events_maxlen, 0, self.keys.backlog(room, peer))
        return bool(done)

    async def rejoin(self, room: str, peer: str, conn: str, envelope: bytes) -> Rejoin:
        result = await self._script(scripts.REJOIN, room, peer, self._owner(conn),
                                    self.keys.room_channel(room), envelope,
                                    self._events_maxlen)
        return Rejoin(result.decode())

    async def sync(self, room: str) -> None:
        future = await self._pipe.submit(
            "EVALSHA", scripts.SYNC.sha, 1, self.keys.room_peers(room),
            self.keys.room_channel(room), envelope.sync_prefix(self.node_id))
        await future

    async def publish(self, room: str, envelope: bytes) -> asyncio.Future[None]:
        future = await self._pipe.submit("PUBLISH", self.keys.room_channel(room), envelope)
        return future

    # -- session resume (contract §6) ------------------------------------------------------

    async def stash(self, room: str, peer: str, frames: list[bytes], ttl: float
                    ) -> asyncio.Future[None]:
        future = await self._pipe.submit("EVALSHA", scripts.STASH.sha, 1,
                                         self.keys.backlog(room, peer), int(ttl * 1000), *frames)
        return future

    async def resume(self, room: str, peer: str, conn: str, token: str, new_token: str,
                     envelope: bytes) -> Resumed | None:
        reply = await self._script(
            scripts.RESUME, room, peer, self._owner(conn), self.keys.room_channel(room), token,
            new_token, envelope, *self.keys.node_peers_parts(), *self.keys.node_channel_parts())
        if reply is None:
            return None
        holder, listening, members = reply
        return Resumed([m.decode() for m in members if m != peer.encode()], holder.decode(),
                       listening > 0)

    async def take_backlog(self, room: str, peer: str) -> list[bytes]:
        future = await self._pipe.submit("EVALSHA", scripts.TAKE.sha, 1,
                                         self.keys.backlog(room, peer))
        frames: list[bytes] = await future
        return frames
