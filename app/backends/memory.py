"""In-memory backend: the embedded single-node default, and a cluster simulator for tests.

Several `MemoryBackend`s sharing one `MemoryHub` behave like nodes sharing one Redis:
each has its own inbox and reader task, so envelopes reach every node asynchronously but
in one order per room, exactly as Redis pub/sub delivers them.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog

from app.core import envelope
from app.core.ports import (
    Backend,
    BackendEvents,
    Directory,
    NodeInfo,
    PeerInfo,
    Rejoin,
    Resumed,
    RoomFull,
    resolved,
)

log = structlog.get_logger(__name__)


@dataclass
class MemoryHub:
    """The shared state that Redis holds in a real cluster."""

    members: dict[str, dict[str, str]] = field(default_factory=dict)  # room -> peer -> owner
    node_peers: dict[str, set[str]] = field(default_factory=dict)  # node -> {"room/peer"}
    subscribers: dict[str, set[MemoryBackend]] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)  # (room, peer) -> digest
    backlogs: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)

    def forget(self, room: str, peer: str) -> None:
        """A membership that ends or starts afresh takes its resume token and backlog."""
        self.tokens.pop((room, peer), None)
        self.backlogs.pop((room, peer), None)

    def publish(self, room: str, payload: bytes) -> None:
        for node in self.subscribers.get(room, ()):
            node.inbox.put_nowait((room, payload))

    def peers(self, room: str) -> list[str]:
        return list(self.members.get(room, ()))

    def index(self, owner: str, room: str, peer: str, add: bool) -> None:
        """Keep the per-node index of memberships (what the reaper reads in Redis)."""
        node = owner.rpartition("/")[0]
        entries = self.node_peers.setdefault(node, set())
        (entries.add if add else entries.discard)(f"{room}/{peer}")
        if not entries:
            del self.node_peers[node]


class MemoryDirectory(Directory):
    """The operator's view of a hub: what `RedisDirectory` reads from Redis."""

    def __init__(self, hub: MemoryHub) -> None:
        self._hub = hub

    async def rooms(self) -> dict[str, int]:
        return {room: len(members) for room, members in sorted(self._hub.members.items())}

    async def room(self, room: str) -> list[PeerInfo]:
        members = self._hub.members.get(room, {})
        return [PeerInfo.from_owner(peer, owner) for peer, owner in sorted(members.items())]

    async def nodes(self) -> list[NodeInfo]:
        names = sorted(self._hub.nodes | set(self._hub.node_peers))
        return [NodeInfo(name, name in self._hub.nodes, len(self._hub.node_peers.get(name, ())))
                for name in names]


class MemoryBackend(Backend):
    resumable = True

    def __init__(self, node_id: str, hub: MemoryHub | None = None) -> None:
        self.node_id = node_id
        self.hub = hub if hub is not None else MemoryHub()
        self.directory = MemoryDirectory(self.hub)
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, events: BackendEvents) -> None:
        self.hub.nodes.add(self.node_id)
        self._reader = asyncio.create_task(self._read(events), name="memory-reader")

    async def stop(self, held_since: float | None = None) -> None:
        self.hub.nodes.discard(self.node_id)
        for subscribers in self.hub.subscribers.values():
            subscribers.discard(self)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    @property
    def ready(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def _read(self, events: BackendEvents) -> None:
        while True:
            room, payload = await self.inbox.get()
            try:
                events.on_envelope(room, payload)
            except Exception:
                log.exception("envelope handler failed", room=room)

    async def subscribe(self, room: str) -> None:
        self.hub.subscribers.setdefault(room, set()).add(self)

    async def unsubscribe(self, room: str) -> None:
        subscribers = self.hub.subscribers.get(room)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self.hub.subscribers[room]

    async def join(
        self, room: str, peer: str, conn: str, fresh: bytes, takeover: bytes, limit: int = 0,
        token: str = "",
    ) -> list[str]:
        members = self.hub.members.setdefault(room, {})
        previous = [p for p in members if p != peer]
        if limit and peer not in members and len(previous) >= limit:
            if not members:
                del self.hub.members[room]
            raise RoomFull(room)
        previous_owner = members.get(peer)
        if previous_owner is not None:
            self.hub.index(previous_owner, room, peer, add=False)
        members[peer] = owner = f"{self.node_id}/{conn}"
        self.hub.index(owner, room, peer, add=True)
        self.hub.forget(room, peer)
        if token:
            self.hub.tokens[(room, peer)] = token
        self.hub.publish(room, takeover if previous_owner is not None else fresh)
        return previous

    async def leave(
        self, room: str, peer: str, conn: str, envelope: bytes, announce_absent: bool = False
    ) -> bool:
        members = self.hub.members.get(room, {})
        owner = f"{self.node_id}/{conn}"
        current = members.get(peer)
        if current == owner:
            del members[peer]
            self.hub.index(owner, room, peer, add=False)
            self.hub.forget(room, peer)
            if not members:
                del self.hub.members[room]
        elif current is not None or not announce_absent:
            return False
        self.hub.publish(room, envelope)
        return True

    async def rejoin(self, room: str, peer: str, conn: str, envelope: bytes) -> Rejoin:
        members = self.hub.members.setdefault(room, {})
        owner = f"{self.node_id}/{conn}"
        current = members.get(peer)
        if current is not None:
            return Rejoin.KEPT if current == owner else Rejoin.TAKEN
        members[peer] = owner
        self.hub.index(owner, room, peer, add=True)
        self.hub.publish(room, envelope)
        return Rejoin.ADDED

    async def sync(self, room: str) -> None:
        self.hub.publish(room, envelope.sync(self.node_id, self.hub.peers(room)))

    async def memberships(self) -> set[tuple[str, str, str]]:
        found = set()
        for entry in self.hub.node_peers.get(self.node_id, ()):
            room, _, peer = entry.partition("/")
            owner = self.hub.members.get(room, {}).get(peer, "")
            found.add((room, peer, owner.rpartition("/")[2]))
        return found

    async def publish(self, room: str, envelope: bytes) -> asyncio.Future[None]:
        self.hub.publish(room, envelope)
        return resolved(None)

    async def stash(self, room: str, peer: str, frames: list[bytes], ttl: float
                    ) -> asyncio.Future[None]:
        self.hub.backlogs.setdefault((room, peer), []).extend(frames)
        return resolved(None)

    async def resume(self, room: str, peer: str, conn: str, token: str, new_token: str,
                     envelope: bytes) -> Resumed | None:
        members = self.hub.members.get(room, {})
        current = members.get(peer)
        if current is None or self.hub.tokens.get((room, peer)) != token:
            return None
        self.hub.index(current, room, peer, add=False)
        members[peer] = owner = f"{self.node_id}/{conn}"
        self.hub.index(owner, room, peer, add=True)
        self.hub.tokens[(room, peer)] = new_token
        self.hub.publish(room, envelope)
        holder = current.rpartition("/")[0]
        return Resumed([p for p in members if p != peer], holder, holder in self.hub.nodes)

    async def take_backlog(self, room: str, peer: str) -> list[bytes]:
        return self.hub.backlogs.pop((room, peer), [])
