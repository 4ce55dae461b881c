"""A whole cluster of real processes: redis-server, N nodes, the reaper."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.support.procs import NodeProcess, RedisServer
from tests.support.wait import wait_until


@dataclass
class ProcessCluster:
    redis: RedisServer
    nodes: list[NodeProcess]
    workers: list[NodeProcess] = field(default_factory=list)
    prefix: str = "sig:"

    @classmethod
    def start(cls, nodes: int = 3, reaper: bool = True, **env: Any) -> ProcessCluster:
        redis = RedisServer().start()
        prefix = f"c{uuid.uuid4().hex[:6]}:"
        common = {"REDIS_URL": redis.url, "KEY_PREFIX": prefix,
                  **{k: str(v) for k, v in env.items()}}
        cluster = cls(redis, [NodeProcess({**common, "NODE_ID": f"n{i}"}) for i in range(nodes)],
                      prefix=prefix)
        if reaper:
            cluster.workers.append(NodeProcess(
                common, argv=[sys.executable, "-m", "workers.reaper"]))
        try:
            for proc in cluster.nodes + cluster.workers:
                proc.start(wait_ready=False)
            for node in cluster.nodes:
                wait_until(node.is_ready, 15, f"node {node.url}")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def members(self, room: str) -> list[str]:
        return sorted(self.redis.cli("SMEMBERS", f"{self.prefix}room:{{{room}}}:peers").split())

    def keys(self, pattern: str = "*") -> list[str]:
        return sorted(self.redis.cli("KEYS", f"{self.prefix}{pattern}").split())

    def stop(self) -> None:
        for proc in self.nodes + self.workers:
            proc.close()
        self.redis.close()
