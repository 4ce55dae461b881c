"""Removing the peers of nodes that died without cleaning up (contract §3 and §6).

A node refreshes `sig:node:{N}` (TTL `NODE_TTL_SECONDS`) and files each membership it
owns in `sig:node:{N}:peers`. When the liveness key has expired but the index remains,
the node is gone: for each of its memberships the same LEAVE script a node runs for a
clean leave removes it, so every peer of the room hears `peer-left` once. Every node
sweeps (the supervisor, every NODE_TTL_SECONDS / 2), and so may `python -m workers.reaper`:
the script removes and announces only while the dead node still owns the membership and
is still dead, so exactly one sweeper wins each, however many notice at once.

`AtomicReaper` is for one Redis (or Sentinel's master), where LEAVE also unlists the room
and drops the index entry; a Redis Cluster's reaper (`app/backends/cluster/reaping.py`)
finishes the same work in crash-safe steps. SCAN runs on every master of a cluster.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod

import structlog
from redis.asyncio import Redis

from app.backends.rediswire import scripts
from app.backends.rediswire.clients import AnyRedis
from app.backends.rediswire.keys import Keys
from app.core import envelope
from app.core.ids import is_valid_id

log = structlog.get_logger("reaper")


class Reaper(ABC):
    def __init__(self, client: AnyRedis, keys: Keys, events_maxlen: int = 0,
                 grace: float = 0.0) -> None:
        self._client = client
        self._keys = keys
        self._events_maxlen = events_maxlen
        self._grace = grace  # RESUME_SECONDS: a dead node's peers wait this long (§6)
        self.next_due: float | None = None  # when the soonest grace seen last sweep ends
        head, tail = keys.node_peers_parts()
        self._index = re.compile(re.escape(head) + r"(.+)" + re.escape(tail))

    @abstractmethod
    async def load_scripts(self) -> None:
        """After a start, a restart of Redis or a failover: EVALSHA must find them."""

    @abstractmethod
    async def _reap(self, node: str, pairs: list[tuple[str, str]], owners: list[str]) -> int:
        """Finish `node`'s memberships (room, peer), owned as `owners` say; announced count."""

    async def sweep(self, skip: str | None = None) -> int:
        """One pass: reap every node whose index outlived its liveness key (not `skip`,
        the sweeping node itself: its own key may be missing only while it repairs)."""
        reaped = 0
        self.next_due = None
        async for raw in self._client.scan_iter(match=self._keys.node_peers("*"), count=1000):
            match = self._index.fullmatch(text(raw))
            if match is None or not is_valid_id(node := match.group(1)) or node == skip:
                continue
            if await self._client.exists(self._keys.node(node)):
                continue
            due = await self._grace_ends(node)
            if due is not None and due > time.time():
                self.next_due = due if self.next_due is None else min(self.next_due, due)
                continue
            reaped += await self.reap(node)
            await self._client.delete(self._keys.node_seen(node))
        return reaped

    async def _grace_ends(self, node: str) -> float | None:
        """A dead node's peers may resume until RESUME_SECONDS after its last heartbeat
        (its `seen` key; gone once that is long past)."""
        if self._grace <= 0:
            return None
        seen = text(await self._client.get(self._keys.node_seen(node)))
        try:
            return float(seen) + self._grace
        except ValueError:
            return None

    async def reap(self, node: str) -> int:
        """Remove and announce every membership `node` still owns; returns how many."""
        k = self._keys
        entries = [text(e) for e in await self._client.smembers(k.node_peers(node))]
        pairs = [(room, peer) for room, _, peer in (e.partition("/") for e in entries)]
        async with self._client.pipeline(transaction=False) as pipe:
            for room, peer in pairs:
                pipe.hget(k.room_conns(room), peer)
            owners = [text(o) for o in await pipe.execute()]
        announced = await self._reap(node, pairs, owners)
        if entries:
            log.info("reaped dead node", node=node, peers=announced, entries=len(entries))
        return announced


class AtomicReaper(Reaper):
    """One Redis: the LEAVE script removes, unlists, unindexes and announces at once."""

    def __init__(self, client: Redis, keys: Keys, events_maxlen: int = 0,
                 grace: float = 0.0) -> None:
        super().__init__(client, keys, events_maxlen, grace)
        self._redis = client

    async def load_scripts(self) -> None:
        await scripts.load_all(self._redis)

    async def _reap(self, node: str, pairs: list[tuple[str, str]], owners: list[str]) -> int:
        k = self._keys
        leaves = []
        async with self._client.pipeline(transaction=False) as pipe:
            for (room, peer), owner in zip(pairs, owners, strict=True):
                leaves.append(owned(node, owner))
                if not leaves[-1]:
                    pipe.srem(k.node_peers(node), f"{room}/{peer}")  # no longer this node's
                    continue
                # only while the node is still dead: it may be back, re-creating this
                pipe.evalsha(scripts.LEAVE.sha, 7, k.room_peers(room), k.room_conns(room),
                             k.rooms, k.node_peers(node), k.events, k.room_resume(room),
                             k.node(node), room, peer, owner, k.room_channel(room),
                             envelope.leave(node, peer, owner.removeprefix(f"{node}/")), 0,
                             self._events_maxlen, 1, k.backlog(room, peer))
            results = await pipe.execute()
        return sum(1 for leave, r in zip(leaves, results, strict=True) if leave and r == 1)


def owned(node: str, owner: str) -> bool:
    """Is `owner` (node/conn, as the conns hash holds it) a connection of `node`?"""
    return owner.startswith(f"{node}/") and is_valid_id(owner.removeprefix(f"{node}/"))


def text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
