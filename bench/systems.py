"""The systems under test, each as two nodes on one private redis-server.

Processes are launched with the test suite's helpers (`tests/support/procs.py`): a
redis-server on a free loopback port (never the machine's 6379) and nodes that are ready
when `GET /ready` answers 200. The peer systems are installed into `bench/.peers/` by
`bench/run` (PyPI: python-socketio; npm: socket.io and @socket.io/redis-adapter, ws and
ioredis; Debian: the Go relay, built offline in GOPATH mode against gorilla/websocket and
redigo).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import NodeProcess, RedisServer
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / ".peers"
NODE_SCRIPTS = {
    "sio-node": ("socket.io 4 on Node.js + @socket.io/redis-adapter", "bench/peers/sio_server.js"),
    "ws-node": ("Node.js: ws + ioredis (bench/peers/ws_server.js)", "bench/peers/ws_server.js"),
}


@dataclass(frozen=True)
class SystemSpec:
    name: str
    label: str
    argv: list[str]
    env: dict[str, str]
    ready: str = "http"  # GET /ready answers 200; "ws": a WebSocket upgrade succeeds
    cwd: Path = ROOT  # "ours@TREE": the node of another checkout, for before/after runs


def peer_python() -> str:
    """The interpreter with python-socketio: this one, or the bench venv's."""
    try:
        import socketio  # noqa: F401
    except ImportError:
        return str(PEERS / "venv" / "bin" / "python")
    return sys.executable


def system_spec(name: str, node_env: dict[str, str] | None = None) -> SystemSpec:
    base, _, tree = name.partition("@")
    if base == "ours" and tree:  # e.g. ours@/tmp/before: `git worktree add` of an older commit
        spec = system_spec("ours", node_env)
        return SystemSpec(name, f"signaling-cluster as checked out in {tree}", spec.argv,
                          spec.env, cwd=Path(tree).resolve())
    if name in ("ours", "ours-picows"):
        # No per-peer rate limit: the peers have none, and the max-throughput run needs none.
        # Every load generator connects from loopback: no per-client connection cap; rooms
        # and the rate limit as large as the scenarios need.
        env = {"RATE_LIMIT_PER_S": "0", "RATE_LIMIT_BYTES_PER_S": "0", "MAX_CONNS_PER_IP": "0",
               "ROOM_MAX_PEERS": "0",
               "MAX_ROOMS_PER_NODE": "0", "KEY_PREFIX": "bench:", **(node_env or {})}
        if name == "ours-picows":  # the same node with picows as its codec (bench only)
            return SystemSpec(name, "signaling-cluster with picows as WebSocket codec",
                              [sys.executable, "-m", "bench.picows_node"], env, ready="ws")
        return SystemSpec(name, "signaling-cluster (this project)",
                          [sys.executable, "-m", "app"], env)
    if name in NODE_SCRIPTS:  # Node.js peers, on the packages bench/run npm-installs
        label, script = NODE_SCRIPTS[name]
        return SystemSpec(name, label, [shutil.which("node") or "node", str(ROOT / script)],
                          {"NODE_PATH": str(PEERS / "node" / "node_modules")})
    if name == "go":
        # One core, as this project's node (a Python process) uses one: the figures compare
        # the work per message, not how many cores a runtime can spread it over.
        return SystemSpec(name, "Go: gorilla/websocket + redigo (bench/peers/go_relay)",
                          [str(PEERS / "go-relay")], {"GOMAXPROCS": "1"})
    if name == "pysio":
        return SystemSpec(name, "python-socketio 5 + AsyncRedisManager on aiohttp",
                          [peer_python(), str(ROOT / "bench/peers/pysio_server.py")], {})
    raise ValueError(f"unknown system {name!r}")


@dataclass
class Cluster:
    """Two nodes of one system on one redis-server, all on loopback."""

    spec: SystemSpec
    redis: RedisServer = field(default_factory=RedisServer)
    nodes: list[NodeProcess] = field(default_factory=list)

    def start(self) -> Cluster:
        """Everything started, or (a node that fails to come up) nothing left running."""
        try:
            self.redis.start()
            self.nodes = [self._node(i) for i in range(2)]
            for node in self.nodes:
                node.start(wait_ready=False)
            for node in self.nodes:
                wait_until(self._ready(node), 30, f"{self.spec.name} node {node.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self, node: NodeProcess) -> Callable[[], bool]:
        if self.spec.ready == "http":
            return node.is_ready

        def upgrades() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", node.port), timeout=0.5) as s:
                    s.sendall(b"GET /ws/ready/probe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket"
                              b"\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                    return s.recv(64).startswith(b"HTTP/1.1 101")
            except OSError:
                return False
        return upgrades

    def _node(self, index: int) -> NodeProcess:
        node_id = re.sub(r"[^A-Za-z0-9._-]", "-", self.spec.name).strip("-")[:60]
        env = {"REDIS_URL": self.redis.url, "NODE_ID": f"{node_id}{index}",
               "LOG_LEVEL": "info", **self.spec.env}
        return NodeProcess(env, argv=list(self.spec.argv), cwd=self.spec.cwd)

    def restart_node(self, index: int) -> None:
        """A fresh process for node `index` (memory baselines need a clean heap)."""
        self._discard(self.nodes[index])
        self.nodes[index] = self._node(index).start(wait_ready=False)
        wait_until(self._ready(self.nodes[index]), 30, f"{self.spec.name} node restart")

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def pids(self) -> dict[str, int]:
        """Measured processes: both nodes and redis-server."""
        out = {f"node{i}": n.proc.pid for i, n in enumerate(self.nodes) if n.proc}
        if self.redis.proc is not None:
            out["redis"] = self.redis.proc.pid
        return out

    def stop(self) -> None:
        for node in self.nodes:
            self._discard(node)
        self.redis.kill()

    @staticmethod
    def _discard(node: NodeProcess) -> None:
        """Stop a node; show what it logged above info level (a benchmark hides nothing)."""
        node.kill()
        if node.log_path is not None and node.log_path.exists():
            noisy = [line for line in node.logs().splitlines()
                     if '"level": "info"' not in line and line.strip()]
            for line in noisy[:20]:
                print(f"[{node.env.get('NODE_ID')}] {line[:300]}", file=sys.stderr)
            os.unlink(node.log_path)
