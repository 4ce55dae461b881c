"""Membership changes on a Redis Cluster: the room's part atomic on its slot, the rest after.

On one Redis a Lua script changes a membership, the node index, `sig:rooms` and the events
stream at once. In a cluster these live on different slots, usually different masters, and
no command spans them. So each change is a few commands in an order chosen so that a crash
between any two leaves a state the reaper repairs:

    join:   SADD node index  ->  room script  ->  SADD sig:rooms (first peer), XADD events
    leave:  room script  ->  relist the room (it emptied), XADD events  ->  SREM node index

The node index is the journal: its entry exists before the membership and goes only after
it (and after the listing was put right). A node that died half-way left an entry, and the
reaper, reading the entries of dead nodes, finishes the work: it removes the membership if
the dead node still owns it, relists the room either way, then drops the entry.

`sig:rooms` is kept by "relist": SREM the room, then SADD it back if its peer set exists.
A joiner that found the room empty SADDs after its script. Whatever the interleaving, once
the steps in flight are done a room with peers is listed and an empty one is not: the last
SREM is followed by a look at the room taken after the SREM. While steps are in flight a
room may be missing from `sig:rooms` for a round trip (the admin listing may miss it).

Room events: appended after the change (at most once if the node dies between the two;
events of one room from two nodes can be a round trip out of order in the stream).

Each step is a command run through `run(*args)`, which routes by the command's key: the
node's ordered per-master pipes, or a `RedisCluster` client for the reaper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.backends.cluster import scripts as cluster_scripts
from app.backends.rediswire.keys import Keys
from app.backends.rediswire.scripts import Script

Run = Callable[..., Awaitable[Any]]


def routing_key(args: tuple[Any, ...]) -> Any:
    """The key a command's slot is decided by (EVALSHA: its first key)."""
    return args[3] if args[0] in ("EVALSHA", "EVAL") else args[1]


@dataclass(frozen=True, slots=True)
class Removal:
    published: bool  # a leave envelope went out (removed, or announced while absent)
    removed: bool  # the membership was `owner`'s and is gone
    owner: str  # another connection's owner (node/conn) when it kept the membership


@dataclass(frozen=True, slots=True)
class Steps:
    run: Run
    keys: Keys
    events_maxlen: int = 0  # 0: no room events

    async def room_script(self, script: Script, room: str, *args: Any) -> Any:
        k = self.keys
        return await self.run("EVALSHA", script.sha, 2, k.room_peers(room), k.room_conns(room),
                              *args)

    async def peer_script(self, script: Script, room: str, peer: str, *args: Any) -> Any:
        """A room script that also touches the room's resume hash and `peer`'s backlog."""
        k = self.keys
        return await self.run("EVALSHA", script.sha, 4, k.room_peers(room), k.room_conns(room),
                              k.room_resume(room), k.backlog(room, peer), peer, *args)

    async def index(self, node: str, room: str, peer: str, add: bool) -> None:
        await self.run("SADD" if add else "SREM", self.keys.node_peers(node), f"{room}/{peer}")

    async def list_room(self, room: str) -> None:
        await self.run("SADD", self.keys.rooms, room)

    async def relist(self, room: str) -> None:
        """Put `sig:rooms` right for `room`: SREM, then SADD back if it has peers."""
        await self.run("SREM", self.keys.rooms, room)
        if await self.run("EXISTS", self.keys.room_peers(room)):
            await self.list_room(room)

    async def events(self, node: str, room: str, peer: str, *kinds: str) -> None:
        if self.events_maxlen <= 0:
            return
        for kind in kinds:
            await self.run("XADD", self.keys.events, "MAXLEN", "~", self.events_maxlen, "*",
                           "type", kind, "room", room, "peer", peer, "node", node)

    async def joined(self, node: str, room: str, peer: str, state: bytes) -> None:
        """After the join script: list a room that was empty, append the events."""
        if state == b"first":
            await self.list_room(room)
            await self.events(node, room, peer, "room-started", "peer-joined")
        elif state == b"fresh":
            await self.events(node, room, peer, "peer-joined")

    async def remove(self, room: str, peer: str, owner: str, envelope: bytes,
                     announce_absent: bool) -> Removal:
        """The leave script, then the listing and the events (not the node index)."""
        reply = await self.peer_script(cluster_scripts.LEAVE, room, peer, owner,
                                       self.keys.room_channel(room), envelope,
                                       int(announce_absent))
        outcome, empty, current = bytes(reply[0]), bool(reply[1]), bytes(reply[2]).decode()
        if empty and outcome != b"owned":
            await self.relist(room)
        removed = outcome == b"removed"
        if removed:
            node = owner.rpartition("/")[0]
            await self.events(node, room, peer, "peer-left",
                              *(("room-finished",) if empty else ()))
        return Removal(outcome in (b"removed", b"announced"), removed, current)

    async def reap(self, node: str, room: str, peer: str, owner: str, envelope: bytes) -> bool:
        """For the reaper: finish whatever dead `node` left of `room/peer`; True if a leave
        was announced. `owner` is the membership's owner as read just before (or '')."""
        announced = False
        if owner.startswith(f"{node}/"):
            announced = (await self.remove(room, peer, owner, envelope, False)).removed
        await self.relist(room)  # the node may have died between a script and its listing
        await self.unindex(node, room, peer)
        return announced

    async def unindex(self, node: str, room: str, peer: str) -> None:
        """Drop a node's index entry, unless the node owns the membership (again): a node
        that was taken for dead re-creates its memberships while the reaper works, and its
        re-created entry must survive (it re-adds its entries after its rejoin script)."""
        await self.index(node, room, peer, add=False)
        owner = await self.run("HGET", self.keys.room_conns(room), peer)
        if owner is not None and bytes(owner).decode().startswith(f"{node}/"):
            await self.index(node, room, peer, add=True)
