"""Putting the cluster's picture of this node right after the backend comes back.

Redis may return empty (restarted), or this node may have been reaped while it could not
refresh its liveness key. Either way, once reconnected, before the node says it is ready:

1. every client still connected here gets its membership back (announced as a join where
   it had vanished; receivers that already knew the peer ignore it), or is closed with
   4001 if another connection took its peer id meanwhile;
2. every client that left during the outage is announced as gone;
3. memberships still filed under this node that no connection here holds are removed;
4. a few seconds later, when the other nodes have repaired too, each local room is
   re-synchronised from a snapshot published in channel order: clients hear of leaves
   that were announced while this node was not yet listening (or never announced, when
   a node died during the outage) and of joins they missed.
"""

from __future__ import annotations

import asyncio

import structlog

from app.core import envelope
from app.core.closes import CLOSE_REPLACED
from app.core.member import Member
from app.core.ports import Backend, BackendUnavailable, Rejoin
from app.core.rooms import LocalRoom

log = structlog.get_logger(__name__)

RESYNC_AFTER = 3.0  # longer than the backends' reconnect backoff cap (2 s)


class Repair:
    def __init__(self, rooms: dict[str, LocalRoom], backend: Backend) -> None:
        self._rooms = rooms  # the service's, shared: what is connected here right now
        self._backend = backend
        self._node = backend.node_id
        self._pending_leaves: dict[tuple[str, str], str] = {}  # (room, peer) -> conn
        self._resync: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._resync is not None:
            self._resync.cancel()

    def leave_later(self, room: str, peer: str, conn: str) -> None:
        """A leave the backend could not take; bounded by the peers that were connected."""
        self._pending_leaves[(room, peer)] = conn

    async def run(self) -> None:
        held = [(local, peer) for local in list(self._rooms.values())
                for peer in self._connected(local)]
        results = await asyncio.gather(*(self._rejoin(local, peer) for local, peer in held))
        announced = await self._flush_leaves()
        connected = {(local.name, peer.id, peer.conn) for local, peer in held}
        stale = [m for m in await self._backend.memberships() if m not in connected]
        await asyncio.gather(*(self._leave(room, peer, conn or "gone", announce_absent=True)
                               for room, peer, conn in stale))
        # A client that went while this ran was held above, so its rejoin may have put its
        # membership back after its leave was deferred: announce those leaves now, until
        # none is left. No await follows the last check before the node says it is ready,
        # so from then on leaves go to the backend directly.
        while self._pending_leaves:
            announced += await self._flush_leaves()
        log.info("memberships repaired", kept=results.count(Rejoin.KEPT),
                 added=results.count(Rejoin.ADDED), taken=results.count(Rejoin.TAKEN),
                 gone=results.count(None), announced_leaves=announced, stale=len(stale))
        self.close()
        self._resync = asyncio.create_task(self._resync_later(), name="resync")

    async def _flush_leaves(self) -> int:
        """Announce the leaves deferred so far; kept for the next recovery if Redis fails."""
        pending, self._pending_leaves = self._pending_leaves, {}
        try:
            await asyncio.gather(*(self._leave(room, peer, conn, announce_absent=True)
                                   for (room, peer), conn in pending.items()))
        except BaseException:
            self._pending_leaves.update(pending)  # try again on the next recovery
            raise
        return len(pending)

    async def _resync_later(self) -> None:
        await asyncio.sleep(RESYNC_AFTER)
        rooms = list(self._rooms)
        for room in rooms:
            try:
                await self._backend.sync(room)
            except BackendUnavailable:
                return  # lost again: the next recovery schedules another pass
        log.info("rooms re-synchronised", rooms=len(rooms))

    @staticmethod
    def _connected(local: LocalRoom) -> list[Member]:
        """Clients whose join completed, active or not: a join envelope lost with the
        connection to Redis would otherwise leave its client connected but deaf."""
        peers = []
        for peer in list(local.conns.values()):
            if peer.closing or peer.known is None:
                continue
            if local.active.setdefault(peer.id, peer) is peer:
                peers.append(peer)
        return peers

    async def _rejoin(self, local: LocalRoom, peer: Member) -> Rejoin | None:
        """Re-create `peer`'s membership; None if its connection ended while the repair
        ran (not re-created: its deferred leave follows)."""
        if local.conns.get(peer.conn) is not peer:
            return None
        joined = envelope.join(self._node, peer.id, peer.conn, False)
        result = await self._backend.rejoin(local.name, peer.id, peer.conn, joined)
        if result is Rejoin.TAKEN and local.active.get(peer.id) is peer:
            del local.active[peer.id]
            peer.replaced = True
            peer.close(CLOSE_REPLACED, "replaced by a newer connection")
        return result

    async def _leave(self, room: str, peer: str, conn: str, announce_absent: bool) -> None:
        left = envelope.leave(self._node, peer, conn)
        await self._backend.leave(room, peer, conn, left, announce_absent=announce_absent)
