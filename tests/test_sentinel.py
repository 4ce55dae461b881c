"""Sentinel (`REDIS_URL=redis+sentinel://...`), with real processes: one master, one
replica, three Sentinels, two nodes and the reaper; the master is killed."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from signaling_client.client import SignalingClient

from tests.support.failover import close_all, exchange, pairs_in
from tests.support.peers import barrier, summary
from tests.support.procs import NodeProcess
from tests.support.redis_setups import SentinelServers, cli
from tests.support.wait import eventually, wait_ready, wait_until

PREFIX = "sen:"


@pytest.fixture(scope="module")
def sentinel() -> Iterator[tuple[SentinelServers, list[NodeProcess], NodeProcess]]:
    servers = SentinelServers(down_after_ms=500, failover_timeout_ms=2000).start()
    env = {"REDIS_URL": servers.url, "KEY_PREFIX": PREFIX}
    nodes = [NodeProcess({**env, "NODE_ID": f"s{i}"}) for i in range(2)]
    reaper = NodeProcess(env, argv=[sys.executable, "-m", "workers.reaper"])
    try:
        for proc in (*nodes, reaper):
            proc.start(wait_ready=False)
        for node in nodes:
            wait_until(node.is_ready, 15, f"node {node.url}")
        yield servers, nodes, reaper
    finally:
        for proc in (*nodes, reaper):
            proc.close()
        servers.stop()


async def test_nodes_follow_a_master_failover_and_repair_membership(
    sentinel: tuple[SentinelServers, list[NodeProcess], NodeProcess],
) -> None:
    servers, nodes, reaper = sentinel
    rooms = [f"room{i}" for i in range(3)]
    groups = await pairs_in(nodes, rooms)
    leaver = await SignalingClient.connect(nodes[1].url, "room2", "leaver")
    await barrier([*groups[2], leaver])
    killed = time.monotonic()
    old = servers.kill_master()
    await leaver.close()  # during the outage: announced once the nodes are back
    new = servers.wait_failover(old)
    promoted = time.monotonic() - killed
    # The worst a failover can lose is every write: the promoted replica starts empty.
    cli(new, "FLUSHALL")

    async def repaired() -> bool:
        peers = [sorted(cli(new, "SMEMBERS", f"{PREFIX}room:{{{r}}}:peers").split())
                 for r in rooms]
        alive = all(cli(new, "EXISTS", f"{PREFIX}node:{{s{i}}}").strip() == "1"
                    for i in range(2))
        return alive and peers == [["p0", "p1"]] * 3

    await eventually(repaired, 20, "the nodes to re-create their memberships on the new master")
    await wait_ready(n.url for n in nodes)
    print(f"master killed: sentinels promoted the replica after {promoted:.2f}s, "
          f"membership repaired and nodes ready after {time.monotonic() - killed:.2f}s")
    for client in groups[2]:  # first and only news: the leave made during the outage
        assert summary([await client.recv(timeout=5)]) == [("peer-left", "leaver")]
    for clients, tag in zip(groups, rooms, strict=True):
        await exchange(clients, tag)  # nothing repeated: no second peer-left or new-peer
    listed = sorted(cli(new, "SMEMBERS", f"{PREFIX}rooms").split())
    assert listed == rooms
    assert reaper.proc is not None and reaper.proc.poll() is None
    await close_all(groups)
