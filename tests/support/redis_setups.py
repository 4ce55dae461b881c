"""Real multi-server Redis set-ups on loopback: a Redis Cluster, and Sentinel with replicas.

Each server is a private redis-server on free ports (never the machine's 6379), with its
files in a temporary directory that `stop` removes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.support.procs import free_port, terminate
from tests.support.wait import wait_until

BASE = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no",
        "--loglevel", "warning"]


def cli(port: int, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), "--raw", *args],
                         capture_output=True, text=True, timeout=10)
    return out.stdout


def info(port: int, section: str) -> dict[str, str]:
    lines = cli(port, "INFO", section).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


@dataclass
class Server:
    port: int
    args: list[str]
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, *self.args], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: cli(self.port, "PING").strip() == "PONG", 10,
                   f"redis-server on {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        terminate(self.proc)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ClusterServers:
    """`masters` masters and `replicas` replicas of each, created with redis-cli --cluster."""

    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    servers: list[Server] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rcluster-")))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:2])

    def start(self) -> ClusterServers:
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                port = free_port()
                self.servers.append(Server(port, [
                    "--port", str(port), "--cluster-enabled", "yes", "--cluster-port",
                    str(free_port()), "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms), *BASE],
                    self.root / str(port)).start())
            subprocess.run(["redis-cli", "--cluster", "create",
                            *(f"127.0.0.1:{s.port}" for s in self.servers),
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           capture_output=True, check=True, timeout=60)
            wait_until(self._ready, 30, "the cluster to be ok on every node")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        for s in self.servers:
            state = info(s.port, "replication")
            if not cli(s.port, "CLUSTER", "INFO").startswith("cluster_state:ok"):
                return False
            if state.get("role") == "slave" and state.get("master_link_status") != "up":
                return False
        return len(self.primaries()) == self.masters

    def live(self) -> list[Server]:
        return [s for s in self.servers if s.alive]

    def slots(self) -> list[tuple[int, int, int]]:
        """(first slot, last slot, master port) as a live node sees it."""
        with redis.Redis(port=self.live()[0].port) as r:
            return [(lo, hi, int(master[1])) for lo, hi, master, *_ in
                    r.execute_command("CLUSTER", "SLOTS")]

    def primaries(self) -> list[int]:
        return sorted({port for _, _, port in self.slots()})

    def master_of(self, key: str) -> int:
        slot = key_slot(key.encode())
        return next(port for lo, hi, port in self.slots() if lo <= slot <= hi)

    def server(self, port: int) -> Server:
        return next(s for s in self.servers if s.port == port)

    def wait_failover(self, dead: int, timeout: float = 20) -> None:
        """Until a replica took over `dead`'s slots and every live node says ok."""
        def done() -> bool:
            return dead not in self.primaries() and len(self.primaries()) == self.masters \
                and all(cli(s.port, "CLUSTER", "INFO").startswith("cluster_state:ok")
                        for s in self.live())
        wait_until(done, timeout, f"a replica to take over from {dead}")

    def stop(self) -> None:
        for s in self.servers:
            s.close()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class SentinelServers:
    """One master, one replica, three Sentinels watching the master as `service`."""

    service: str = "signaling"
    down_after_ms: int = 500
    failover_timeout_ms: int = 2000
    data: list[Server] = field(default_factory=list)
    sentinels: list[Server] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rsentinel-")))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> SentinelServers:
        try:
            master = free_port()
            self.data.append(Server(master, ["--port", str(master), *BASE],
                                    self.root / "master").start())
            replica = free_port()
            self.data.append(Server(replica, [
                "--port", str(replica), "--replicaof", "127.0.0.1", str(master), *BASE],
                self.root / "replica").start())
            wait_until(lambda: info(replica, "replication").get("master_link_status") == "up",
                       10, "the replica to sync")
            for i in range(3):
                self.sentinels.append(self._sentinel(i, master))
            wait_until(self._watching, 20, "the sentinels to know each other and the replica")
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinel(self, i: int, master: int) -> Server:
        port = free_port()
        conf = self.root / f"sentinel{i}" / "sentinel.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\nloglevel warning\n"
            f"sentinel monitor {self.service} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.service} 1\n")
        return Server(port, [str(conf), "--sentinel"], conf.parent).start()

    def _watching(self) -> bool:
        for s in self.sentinels:
            state = dict(zip(*[iter(cli(s.port, "SENTINEL", "MASTER", self.service)
                                    .splitlines())] * 2, strict=False))
            if state.get("num-slaves") != "1" or state.get("num-other-sentinels") != "2":
                return False
        return True

    def master_port(self) -> int:
        """The master the Sentinels name now."""
        out = cli(self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(out.split()[1])

    def kill_master(self) -> int:
        port = self.master_port()
        next(s for s in self.data if s.port == port).kill()
        return port

    def wait_failover(self, old: int, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.master_port()
            if port != old and info(port, "replication").get("role") == "master":
                return port
            time.sleep(0.05)
        raise TimeoutError("sentinels did not promote the replica")

    def stop(self) -> None:
        for s in [*self.sentinels, *self.data]:
            s.close()
        shutil.rmtree(self.root, ignore_errors=True)
