"""Prometheus metrics of one node, in a registry of its own.

Tests run several nodes in one process, so nothing goes to prometheus-client's global
registry: each app holds a `NodeMetrics` (`app.edge.state.METRICS`) and `/metrics` renders its
registry. What the service counts per frame or envelope lives in `HotPath` as plain
integers (see `app/obs/hotpath.py` for why); rarer events use prometheus-client's metrics.
Gauges of state the service already holds (peers, rooms, subscriptions) are read when
scraped, not kept in step by hand.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from app.core.protocol import OK, ErrorCode
from app.obs.hotpath import HotPath

__all__ = ["CONTENT_TYPE", "OK", "NodeMetrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


def _version() -> str:
    try:
        return metadata.version("signaling-cluster")
    except metadata.PackageNotFoundError:
        return "unknown"


class NodeMetrics:
    """Every metric of one node. Implements `BackendObserver` for backend errors."""

    def __init__(self, node: str = "", backend: str = "") -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._build = Info("signaling_build", "Version of this node's code and runtime.",
                           registry=r)
        self._node = node
        self.set_backend(backend)
        self.peers = Gauge("signaling_peers", "WebSocket connections on this node.", registry=r)
        self.rooms = Gauge("signaling_rooms", "Rooms with a connection on this node.", registry=r)
        self.subscriptions = Gauge("signaling_pubsub_subscriptions",
                                   "Room channels this node is subscribed to.", registry=r)
        self.ready = Gauge("signaling_ready", "1 while the backend is reachable.", registry=r)
        self.held = Gauge("signaling_held_sessions",
                          "Sessions whose connection ended, held here for resume.", registry=r)
        self.draining = Gauge("signaling_draining", "1 while the node drains.", registry=r)
        self.connections = Counter("signaling_connections", "Connections accepted.", registry=r)
        self.queue_overflows = Counter("signaling_send_queue_overflows", "Peers closed "
                                       "because their send queue overflowed.", registry=r)
        self.kicks = Counter("signaling_kicks", "Connections closed by an operator.", registry=r)
        self.rate_limit_closes = Counter("signaling_rate_limit_closes", "Peers closed (1008) "
                                         "for flooding past RATE_LIMIT_STRIKES.", registry=r)
        self.refusals = Counter("signaling_upgrades_refused", "Upgrades refused before the "
                                "WebSocket, by the code of the JSON answer.", ["code"],
                                registry=r)
        self.redis_errors = Counter("signaling_redis_errors", "Failed Redis round trips, "
                                    "commands, heartbeats or readers.", ["where"], registry=r)
        self.redis_reconnects = Counter("signaling_redis_reconnects",
                                        "Reconnections to Redis after a loss.", registry=r)
        self.hot = HotPath()
        r.register(self.hot)

    def set_backend(self, backend: str) -> None:
        """Name the backend in `signaling_build_info` (known once the app has built it)."""
        self._build.info({"version": _version(), "python": platform.python_version(),
                          "node": self._node, "backend": backend})

    def watch(self, peers: Callable[[], float], rooms: Callable[[], float],
              subscriptions: Callable[[], float], ready: Callable[[], bool],
              held: Callable[[], float]) -> None:
        """Read these gauges from the service's own state at scrape time."""
        self.peers.set_function(peers)
        self.held.set_function(held)
        self.rooms.set_function(rooms)
        self.subscriptions.set_function(subscriptions)
        self.ready.set_function(lambda: float(ready()))

    def frame(self, kind: str, outcome: str) -> None:
        """Count one client frame; `kind` from FRAME_TYPES, `outcome` OK or an error code."""
        self.hot.frames[(kind, outcome)] += 1

    def error(self, code: ErrorCode) -> None:
        self.hot.errors[code] += 1

    def envelope(self, kind: str) -> None:
        self.hot.envelopes[kind] += 1

    def bad_envelope(self) -> None:
        self.hot.bad_envelopes += 1

    def delivered(self, kind: str, remote: bool, sent: float) -> None:
        """A relay or chat from a node (this one or another) reached a local peer."""
        self.hot.observe((kind, "remote" if remote else "local"), max(0.0, time.time() - sent))

    def set_draining(self, draining: bool) -> None:
        self.draining.set(1 if draining else 0)

    # BackendObserver
    def backend_error(self, where: str) -> None:
        self.redis_errors.labels(where).inc()

    def backend_reconnected(self) -> None:
        self.redis_reconnects.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this node's registry."""
        return generate_latest(self.registry)
