"""Redis Cluster backend (`REDIS_URL=redis+cluster://host:port[,host:port...]`).

The same contract as `RedisBackend`, on the masters of a cluster:
- a room's traffic stays on the master of its slot: envelopes go out with SPUBLISH on the
  room's shard channel and nodes listen with SSUBSCRIBE (Redis 7 sharded pub/sub), so a
  master carries only its own rooms' traffic instead of every master carrying all of it;
- each master has one ordered pipe (`shards.py`): a room's commands keep their order;
- a membership change is the room's atomic script plus steps on other slots, in the
  crash-safe order of `cluster_steps.py`;
- a moved slot, a failover or a lost connection is a loss as with one Redis: reconnect
  with a fresh slot map, resubscribe, repair memberships (`supervisor.py`).

The node index (`sig:node:{N}:peers`) is written only by node N (and by the reaper once N
is dead, or by the node a session of N resumes on, which drops N's entry after taking the
membership over: contract §6, `resume`). A connection that lost its peer id to another
node's connection drops its own entry when it leaves (the service calls `leave` for
replaced connections too, and for a held session it handed over); entries of connections
this node still holds are never dropped (`_held`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from redis.asyncio.cluster import RedisCluster

from app.backends.cluster import scripts as cluster_scripts
from app.backends.cluster.reaping import StepsReaper
from app.backends.cluster.shards import ShardHooks, ShardSet
from app.backends.cluster.steps import Steps, routing_key
from app.backends.rediswire.clients import shard_client
from app.backends.rediswire.keys import Keys
from app.backends.rediswire.scripts import STASH, TAKE
from app.backends.rediswire.supervisor import FAILURES, SupervisedBackend
from app.config.redisurl import RedisTarget
from app.core.envelope import sync_prefix
from app.core.ports import BackendUnavailable, Rejoin, Resumed, RoomFull

log = structlog.get_logger(__name__)


class ClusterBackend(SupervisedBackend):
    resumable = True

    def __init__(self, cluster: RedisCluster, target: RedisTarget, node_id: str, keys: Keys,
                 node_ttl: float = 4.0, events_maxlen: int = 0, grace: float = 0.0) -> None:
        super().__init__(cluster, node_id, keys, node_ttl,
                         StepsReaper(cluster, keys, events_maxlen, grace), grace)
        self._cluster = cluster
        self._shards = ShardSet(cluster, ShardHooks(
            client=lambda host, port: shard_client(host, port, target), spawn=self._spawn,
            read=self._read, on_lost=self._signal_lost, on_message=self._on_message,
            on_error=lambda: self.observer.backend_error("command")))
        self._steps = Steps(self._run, keys, events_maxlen)
        # (room, peer) -> conns of this node that hold or are taking that membership
        self._held: dict[tuple[str, str], set[str]] = {}
        # Listened on (SSUBSCRIBE, on its slot's master) while the node runs: a resume
        # elsewhere learns from SPUBLISH's count whether this node will hand a backlog over.
        self._channels[keys.node_channel(node_id).encode()] = ""

    async def _connect(self) -> None:
        """Slot map, a pipe per master, scripts, liveness key, sharded subscriptions."""
        await self._shards.refresh()
        await self._beat(claim=True)
        await self._shards.resubscribe(list(self._channels))
        await self._shards.open_pipes()

    def _drop(self, reason: str) -> None:
        self._shards.close_pipes(reason)

    async def _beat(self, claim: bool) -> bool:
        """The liveness key, and a PING down every master's pipe: a master that failed
        over is noticed by every node, not only by those with traffic on it, so each
        re-creates what the promoted replica may have missed (`sig:rooms` included)."""
        kept = await super()._beat(claim)
        if not claim:
            pings = [await shard.pipe.submit("PING") for shard in self._shards]
            async with asyncio.timeout(max(0.5, self._beat_every)):
                replies = await asyncio.gather(*pings, return_exceptions=True)
            failed = next((r for r in replies if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
        return kept

    async def _close(self) -> None:
        await self._shards.close()
        with contextlib.suppress(*FAILURES):
            await self._cluster.aclose()

    async def _submit(self, key: str, *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._shards.for_key(key).pipe.submit(*args)
        return future

    async def _run(self, *args: Any) -> Any:
        return await (await self._submit(routing_key(args), *args))

    # -- pub/sub ---------------------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        if not self._up:
            raise BackendUnavailable("redis is unreachable")
        channel = self.keys.room_channel(room).encode()
        self._channels[channel] = room
        try:
            await self._shards.subscribe(channel)
        except BaseException:
            self._channels.pop(channel, None)  # the service will not unsubscribe it
            raise

    async def unsubscribe(self, room: str) -> None:
        channel = self.keys.room_channel(room).encode()
        if self._channels.pop(channel, None) is not None and self._up:
            await self._shards.unsubscribe(channel)

    # -- membership ------------------------------------------------------------------------

    def _hold(self, room: str, peer: str, conn: str) -> None:
        self._held.setdefault((room, peer), set()).add(conn)

    def _release(self, room: str, peer: str, conn: str) -> bool:
        """Forget `conn`'s hold; True if no connection here holds the membership any more."""
        conns = self._held.get((room, peer), set())
        conns.discard(conn)
        if not conns:
            self._held.pop((room, peer), None)
        return not conns

    async def join(
        self, room: str, peer: str, conn: str, fresh: bytes, takeover: bytes, limit: int = 0,
        token: str = "",
    ) -> list[str]:
        owner, steps = self._owner(conn), self._steps
        self._hold(room, peer, conn)
        try:
            await steps.index(self.node_id, room, peer, add=True)  # the journal entry first
            reply = await steps.peer_script(cluster_scripts.JOIN, room, peer, owner,
                                            self.keys.room_channel(room), fresh, takeover,
                                            limit, token)
        except BaseException:
            self._release(room, peer, conn)  # the entry stays: the membership may exist
            raise
        if reply is None:
            if self._release(room, peer, conn):
                await steps.index(self.node_id, room, peer, add=False)
            raise RoomFull(room)
        state, *members = reply
        await steps.joined(self.node_id, room, peer, state)
        return [m.decode() for m in members if m != peer.encode()]

    async def leave(
        self, room: str, peer: str, conn: str, envelope: bytes, announce_absent: bool = False
    ) -> bool:
        try:
            removal = await self._steps.remove(room, peer, self._owner(conn), envelope,
                                               announce_absent)
        finally:
            alone = self._release(room, peer, conn)
        if alone and not removal.owner.startswith(f"{self.node_id}/"):
            await self._steps.index(self.node_id, room, peer, add=False)
        return removal.published

    async def rejoin(self, room: str, peer: str, conn: str, envelope: bytes) -> Rejoin:
        steps = self._steps
        self._hold(room, peer, conn)
        await steps.index(self.node_id, room, peer, add=True)
        result, was_empty = await steps.room_script(
            cluster_scripts.REJOIN, room, peer, self._owner(conn),
            self.keys.room_channel(room), envelope)
        outcome = Rejoin(bytes(result).decode())
        if outcome is not Rejoin.TAKEN:
            await steps.list_room(room)  # always: a failover may have lost the listing
            # again after the script: a reaper that took this node for dead may have
            # dropped the entry meanwhile (see Steps.unindex)
            await steps.index(self.node_id, room, peer, add=True)
        if outcome is Rejoin.ADDED:
            await steps.joined(self.node_id, room, peer, b"first" if was_empty else b"fresh")
        return outcome

    # -- publishing ------------------------------------------------------------------------

    async def sync(self, room: str) -> None:
        await self._run("EVALSHA", cluster_scripts.SYNC_SHARDED.sha, 1,
                        self.keys.room_peers(room), self.keys.room_channel(room),
                        sync_prefix(self.node_id))

    async def publish(self, room: str, envelope: bytes) -> asyncio.Future[None]:
        channel = self.keys.room_channel(room)
        return await self._submit(channel, "SPUBLISH", channel, envelope)

    # -- session resume (contract §6) ------------------------------------------------------

    async def stash(self, room: str, peer: str, frames: list[bytes], ttl: float
                    ) -> asyncio.Future[None]:
        key = self.keys.backlog(room, peer)
        return await self._submit(key, "EVALSHA", STASH.sha, 1, key, int(ttl * 1000), *frames)

    async def resume(self, room: str, peer: str, conn: str, token: str, new_token: str,
                     envelope: bytes) -> Resumed | None:
        """The journal's order: this node's index entry, the room script, then the old
        node's entry goes and its channel is asked whether it still listens."""
        steps = self._steps
        self._hold(room, peer, conn)
        try:
            await steps.index(self.node_id, room, peer, add=True)
            reply = await self._run(
                "EVALSHA", cluster_scripts.RESUME.sha, 3, self.keys.room_peers(room),
                self.keys.room_conns(room), self.keys.room_resume(room), peer,
                self._owner(conn), self.keys.room_channel(room), token, new_token, envelope)
        except BaseException:
            self._release(room, peer, conn)  # the entry stays: the membership may be ours
            raise
        if reply is None:
            if self._release(room, peer, conn):
                await steps.unindex(self.node_id, room, peer)
            return None
        previous, *members = reply
        holder = bytes(previous).decode().rpartition("/")[0]
        if holder != self.node_id:
            await steps.index(holder, room, peer, add=False)
        channel = self.keys.node_channel(holder)
        listening = await self._run("SPUBLISH", channel, peer)
        return Resumed([m.decode() for m in members if m != peer.encode()], holder,
                       listening > 0)

    async def take_backlog(self, room: str, peer: str) -> list[bytes]:
        key = self.keys.backlog(room, peer)
        frames: list[bytes] = await self._run("EVALSHA", TAKE.sha, 1, key)
        return frames
