"""Every Redis key and channel name (contract §2), in one place.

Room ids and node ids sit inside literal braces: a Redis Cluster hash tag, so that all keys
and the channel of one room (or of one node) hash to the same slot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "sig:"

    @property
    def rooms(self) -> str:
        """Set of ids of rooms with at least one peer."""
        return f"{self.prefix}rooms"

    def room_peers(self, room: str) -> str:
        """Set of peer ids in `room`."""
        return f"{self.prefix}room:{{{room}}}:peers"

    def room_conns(self, room: str) -> str:
        """Hash peer id -> `node/conn` of the connection that owns the membership."""
        return f"{self.prefix}room:{{{room}}}:conns"

    def room_resume(self, room: str) -> str:
        """Hash peer id -> SHA-256 (hex) of its newest resume token."""
        return f"{self.prefix}room:{{{room}}}:resume"

    def backlog(self, room: str, peer: str) -> str:
        """List of frames kept for `peer` while its connection is away (resume)."""
        return f"{self.prefix}room:{{{room}}}:backlog:{peer}"

    def room_channel(self, room: str) -> str:
        """Pub/sub channel carrying msgpack envelopes for `room`."""
        return f"{self.prefix}room:{{{room}}}"

    def node(self, node: str) -> str:
        """Liveness key of a node, refreshed with a TTL while the node runs."""
        return f"{self.prefix}node:{{{node}}}"

    def node_seen(self, node: str) -> str:
        """When `node` last refreshed its liveness key (Unix seconds): a dead node's grace
        for resume counts from there. Expires by itself after the grace."""
        return f"{self.prefix}node:{{{node}}}:seen"

    def node_channel(self, node: str) -> str:
        """Pub/sub channel `node` listens on while it runs: a resume asks it to hand over."""
        return f"{self.prefix}node:{{{node}}}:alive"

    def node_channel_parts(self) -> tuple[str, str]:
        """`node_channel` split around the node id, for the script that builds it."""
        return f"{self.prefix}node:{{", "}:alive"

    def node_peers(self, node: str) -> str:
        """Set of `room/peer` memberships owned by connections on `node` (for the reaper)."""
        return f"{self.prefix}node:{{{node}}}:peers"

    def node_peers_parts(self) -> tuple[str, str]:
        """`node_peers` split around the node id, for scripts that build it from an owner."""
        return f"{self.prefix}node:{{", "}:peers"

    def node_pattern(self) -> str:
        """`SCAN MATCH` pattern for all liveness keys."""
        return f"{self.prefix}node:{{*}}"

    @property
    def events(self) -> str:
        """Stream of room events (room-started, peer-joined, ...) for the webhook worker."""
        return f"{self.prefix}events"

    @property
    def events_parked(self) -> str:
        """Stream of events the webhook worker gave up on after its last attempt."""
        return f"{self.prefix}events:parked"

    def node_peers_pattern(self) -> str:
        """`SCAN MATCH` pattern for all per-node membership sets (live or dead nodes)."""
        return f"{self.prefix}node:{{*}}:peers"
