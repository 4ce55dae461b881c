"""The narrow interface between the signaling service and whatever connects the nodes.

A backend is two things, kept together because the guarantees need them atomic:

- a membership store (who is in which room, and which connection owns each membership);
- a broker of per-room channels carrying opaque envelopes (bytes) between nodes.

Contract for implementations (the service relies on every line):

- Channel order is total: every subscriber of a room sees that room's envelopes in one
  order, and a membership change (`join`, `leave`) is published atomically with the change
  itself, so a node can tell from its position in the channel what a joiner was shown.
- Submission order is kept: calls to `join`, `leave` and `publish` made by one
  task reach the channel in the order they were made, and none is sent twice.
- `subscribe` returns only once the subscription is live: anything published after it
  returns reaches this node (announce-after-subscribe rests on this).
- `on_envelope` is called from one reader task, in channel order, and must not block.
- When the backend loses its server it calls `on_lost`, refuses work (BackendUnavailable)
  and reconnects by itself; once connected and resubscribed it awaits `on_recovered`
  (where the node repairs memberships) before it reports `ready` again.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from app.core.protocol import ErrorCode

T = TypeVar("T")

class BackendEvents(Protocol):
    """What a backend reports to the node that owns it."""

    def on_envelope(self, room: str, payload: bytes) -> None:
        """An envelope of a subscribed room, in channel order. Must not block."""

    def on_lost(self) -> None:
        """The backend became unreachable; from now on its calls raise BackendUnavailable."""

    async def on_recovered(self) -> None:
        """Connected and resubscribed again: repair state; `ready` waits for this."""


class BackendUnavailable(Exception):
    """The backend cannot be reached; frames that need it are answered `unavailable`."""


class RoomFull(Exception):
    """The room already holds its maximum number of peers."""


class Rejoin(StrEnum):
    KEPT = "kept"  # the membership was still there, owned by this connection
    ADDED = "added"  # it was gone (Redis restarted, or the node was reaped): re-created
    TAKEN = "taken"  # another connection owns the peer id now: this one must close


class BackendObserver(Protocol):
    """What a backend reports for metrics (`app/obs/metrics.py` implements it)."""

    def backend_error(self, where: str) -> None:
        """A command, the heartbeat or the pub/sub connection failed."""

    def backend_reconnected(self) -> None:
        """The connection to the fabric was re-established after a loss."""


class _Silent:
    def backend_error(self, where: str) -> None:
        pass

    def backend_reconnected(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer: str
    node: str
    conn: str

    @classmethod
    def from_owner(cls, peer: str, owner: str) -> PeerInfo:
        """`owner` is the `node/conn` that the membership records."""
        node, _, conn = owner.rpartition("/")
        return cls(peer, node, conn)


@dataclass(frozen=True, slots=True)
class Resumed:
    """A resume the backend accepted: the membership is the new connection's and the
    resume envelope is on the channel (contract §6)."""

    peers: list[str]  # the room's members at that point, without the peer
    holder: str  # the node whose connection owned the membership
    listening: bool  # that node still listens, so it will hand the backlog over


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node: str
    alive: bool  # its liveness key exists; a dead node's peers wait for the reaper
    peers: int  # memberships owned by its connections
    details: dict[str, Any] = field(default_factory=dict)  # host, pid, started when known


class Directory(ABC):
    @abstractmethod
    async def rooms(self) -> dict[str, int]:
        """Rooms with at least one peer, and how many peers each has."""

    @abstractmethod
    async def room(self, room: str) -> list[PeerInfo]:
        """The peers of `room` and the node and connection that own each membership."""

    @abstractmethod
    async def nodes(self) -> list[NodeInfo]:
        """Nodes that are alive or still own memberships, with their peer counts."""


class Count(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Meter(Protocol):
    """What the service counts (`app/obs/metrics.py` implements it for Prometheus)."""

    @property
    def connections(self) -> Count: ...
    @property
    def queue_overflows(self) -> Count: ...
    @property
    def rate_limit_closes(self) -> Count: ...
    @property
    def kicks(self) -> Count: ...

    def watch(self, peers: Callable[[], float], rooms: Callable[[], float],
              subscriptions: Callable[[], float], ready: Callable[[], bool],
              held: Callable[[], float]) -> None:
        """Gauges read when scraped, from the service's own state."""

    def frame(self, kind: str, outcome: str) -> None:
        """A client frame of type `kind` was handled: `OK` or the error code sent."""

    def error(self, code: ErrorCode) -> None: ...
    def envelope(self, kind: str) -> None: ...
    def bad_envelope(self) -> None: ...

    def delivered(self, kind: str, remote: bool, sent: float) -> None:
        """A relay or chat reached a local peer; `sent` is the sender node's clock."""

    def set_draining(self, draining: bool) -> None: ...


class Backend(ABC):
    """What a node needs from the cluster fabric. See the module docstring for the rules."""

    node_id: str
    directory: Directory  # read-only view for operators (admin API, inspector)
    observer: BackendObserver = _Silent()  # the node sets its metrics here before `start`
    resumable: bool = False  # keeps per-peer backlogs, so sessions can resume (§6)

    @abstractmethod
    async def start(self, events: BackendEvents) -> None:
        """Connect and start reporting to `events`; raises BackendUnavailable if it cannot."""

    @abstractmethod
    async def stop(self, held_since: float | None = None) -> None:
        """Stop reading, forget this node's liveness, and close connections.

        `held_since`: the node leaves sessions held for resume, the oldest lost at this
        Unix time: the sweep of dead nodes counts their grace from there."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """True while the backend is reachable."""

    @abstractmethod
    async def subscribe(self, room: str) -> None:
        """Start receiving the room's envelopes; returns once the subscription is live."""

    @abstractmethod
    async def unsubscribe(self, room: str) -> None:
        """Stop receiving the room's envelopes."""

    @abstractmethod
    async def join(
        self, room: str, peer: str, conn: str, fresh: bytes, takeover: bytes, limit: int = 0,
        token: str = "",
    ) -> list[str]:
        """Make `conn` the owner of `peer`'s membership and publish the join, atomically.

        `token` is the digest of the peer's resume token, kept for `resume` (none: "").

        Publishes `takeover` if the peer was already a member (another connection owned
        it), `fresh` otherwise. Returns the ids that were members before, without `peer`.
        Raises `RoomFull` when `limit` > 0 and the room already holds `limit` other peers.
        """

    @abstractmethod
    async def leave(
        self, room: str, peer: str, conn: str, envelope: bytes, announce_absent: bool = False
    ) -> bool:
        """Remove the membership if `conn` still owns it, and then publish `envelope`.

        Returns False, publishing nothing, when another connection owns it (a takeover).
        With `announce_absent`, also publishes when nobody owns it any more (a leave that
        happened while Redis was away, or after it restarted empty).
        """

    @abstractmethod
    async def rejoin(self, room: str, peer: str, conn: str, envelope: bytes) -> Rejoin:
        """Re-create a membership after an outage, if no other connection took it.

        Publishes `envelope` (a fresh join) only when the membership was missing.
        """

    @abstractmethod
    async def sync(self, room: str) -> None:
        """Publish the room's current members (a sync envelope) on its channel, in order."""

    @abstractmethod
    async def memberships(self) -> set[tuple[str, str, str]]:
        """(room, peer, conn) of every membership the backend files under this node."""

    @abstractmethod
    async def publish(self, room: str, envelope: bytes) -> asyncio.Future[None]:
        """Queue `envelope` for the room channel (a relay, a chat: one PUBLISH each).

        Returns at once (after waiting only for queue space) with a future that fails with
        `BackendUnavailable` if it was not sent.
        """

    # -- session resume (contract §6); a backend that is not `resumable` keeps none ---------

    async def stash(self, room: str, peer: str, frames: list[bytes], ttl: float
                    ) -> asyncio.Future[None]:
        """Append `frames` to `peer`'s backlog, in order; it expires `ttl` s after this."""
        raise BackendUnavailable("this backend keeps no backlogs")

    async def resume(self, room: str, peer: str, conn: str, token: str, new_token: str,
                     envelope: bytes) -> Resumed | None:
        """If `token` is the digest the membership holds, make `conn` its owner, keep
        `new_token`, and publish `envelope`, atomically; None if it is not (or gone)."""
        return None

    async def take_backlog(self, room: str, peer: str) -> list[bytes]:
        """Read and delete `peer`'s backlog."""
        return []


def resolved(value: T) -> asyncio.Future[T]:
    """A future that is already done, for backends that act synchronously."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
