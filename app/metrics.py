"""Prometheus metrics of one node, in a registry of its own.

Tests run several nodes in one process, so nothing goes to prometheus-client's global
registry: each app holds a `NodeMetrics` (`app.state.METRICS`) and `/metrics` renders its
registry. The service calls a few methods per frame; those look up children that are
bound once (label lookups allocate), so the hot path costs a dict lookup and an add.
Gauges of state the service already holds (peers, rooms, subscriptions) are read when
scraped, not kept in step by hand.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from app.protocol import ErrorCode

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
FRAME_TYPES: Final = ("offer", "answer", "ice", "chat", "ping", "other", "invalid", "binary")
"""`invalid`: refused before its type counted (too large, rate-limited, malformed);
`other`: a well-formed frame of an unknown type."""
OK: Final = "ok"
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0)


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
        self.draining = Gauge("signaling_draining", "1 while the node drains.", registry=r)
        self.connections = Counter("signaling_connections", "Connections accepted.", registry=r)
        self.envelopes_bad = Counter("signaling_envelopes_bad", "Envelopes that did not "
                                     "decode (logged, dropped).", registry=r)
        self.queue_overflows = Counter("signaling_send_queue_overflows", "Peers closed "
                                       "because their send queue overflowed.", registry=r)
        self.kicks = Counter("signaling_kicks", "Connections closed by an operator.", registry=r)
        self.redis_errors = Counter("signaling_redis_errors", "Failed Redis round trips, "
                                    "commands, heartbeats or readers.", ["where"], registry=r)
        self.redis_reconnects = Counter("signaling_redis_reconnects",
                                        "Reconnections to Redis after a loss.", registry=r)
        self._bind_hot(r)

    def _bind_hot(self, r: CollectorRegistry) -> None:
        """The labelled metrics touched per frame or envelope, with their children bound."""
        self._frame_family = Counter("signaling_frames", "Client frames by type and outcome "
                                     "(ok or an error code).", ["type", "outcome"], registry=r)
        errors = Counter("signaling_errors", "Error frames sent to clients, by code.",
                         ["code"], registry=r)
        latency = Histogram("signaling_relay_latency_seconds", "Time from the origin node's "
                            "publish to delivery on this node (wall clocks: skew counts).",
                            ["kind", "path"], buckets=LATENCY_BUCKETS, registry=r)
        envelopes = Counter("signaling_envelopes_received", "Room envelopes received, by kind.",
                            ["kind"], registry=r)
        # the usual frame series are bound now (so rates start at 0); others on first use
        self._frames = {(t, OK): self._frame_family.labels(t, OK) for t in FRAME_TYPES[:5]}
        self._errors = {code: errors.labels(code) for code in ErrorCode}
        self._latency = {(k, p): latency.labels(k, p) for k in ("relay", "chat")
                         for p in ("local", "remote")}
        self._envelopes = {k: envelopes.labels(k) for k in ("j", "l", "r", "c", "k")}

    def set_backend(self, backend: str) -> None:
        """Name the backend in `signaling_build_info` (known once the app has built it)."""
        self._build.info({"version": _version(), "python": platform.python_version(),
                          "node": self._node, "backend": backend})

    def watch(self, peers: Callable[[], float], rooms: Callable[[], float],
              subscriptions: Callable[[], float], ready: Callable[[], bool]) -> None:
        """Read these gauges from the service's own state at scrape time."""
        self.peers.set_function(peers)
        self.rooms.set_function(rooms)
        self.subscriptions.set_function(subscriptions)
        self.ready.set_function(lambda: float(ready()))

    def frame(self, kind: str, outcome: str) -> None:
        """Count one client frame; `kind` from FRAME_TYPES, `outcome` OK or an error code."""
        child = self._frames.get((kind, outcome))
        if child is None:
            child = self._frames[(kind, outcome)] = self._frame_family.labels(kind, outcome)
        child.inc()

    def error(self, code: ErrorCode) -> None:
        self._errors[code].inc()

    def envelope(self, kind: str) -> None:
        self._envelopes[kind].inc()

    def delivered(self, kind: str, remote: bool, sent: float) -> None:
        """A relay or chat from a node (this one or another) reached a local peer."""
        child = self._latency[(kind, "remote" if remote else "local")]
        child.observe(max(0.0, time.time() - sent))

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
