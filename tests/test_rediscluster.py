"""Redis Cluster specifics, with real processes: a 3-master cluster made by
`redis-cli --cluster create`, node processes on `REDIS_URL=redis+cluster://...`.

The cross-node behaviour suite runs on the cluster too (the `rediscluster` form of the
`cluster` fixture); here: a room's traffic stays on its slot's master, a moved slot and a
failed master are survived, the reaper finishes what a dead node left on any master, and
the inspector reads the whole cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from app.backends.cluster.steps import Steps
from app.backends.rediswire.clients import close_client, plain_client
from app.backends.rediswire.keys import Keys
from tests.support.cluster import unique
from tests.support.failover import close_all, exchange, pairs_in
from tests.support.peers import barrier, summary
from tests.support.procs import ROOT, NodeProcess
from tests.support.redis_setups import ClusterServers, cli, info
from tests.support.wait import eventually, wait_ready, wait_until
from tests.test_inspect import inspect
from workers.reaper import reaper_for


def room_on(servers: ClusterServers, keys: Keys, master: int, name: str = "room") -> str:
    """A fresh room id whose slot lives on `master`."""
    slots = servers.slots()
    while True:
        room = unique(name)
        slot = key_slot(keys.room_channel(room).encode())
        if any(lo <= slot <= hi and port == master for lo, hi, port in slots):
            return room


def commandstats(port: int) -> dict[str, int]:
    """Calls per command on one master (commands run inside scripts included)."""
    return {name.removeprefix("cmdstat_"): int(value.split(",")[0].split("=")[1])
            for name, value in info(port, "commandstats").items()}


# -- on the session's cluster ------------------------------------------------------------


async def test_a_rooms_traffic_reaches_only_the_master_of_its_slot(
    redis_cluster: ClusterServers, cluster_processes: list[NodeProcess]
) -> None:
    keys = Keys(cluster_processes[0].env["KEY_PREFIX"])
    masters = redis_cluster.primaries()
    rooms = [room_on(redis_cluster, keys, port) for port in masters]
    groups = await pairs_in(cluster_processes, rooms)
    for port in masters:
        cli(port, "CONFIG", "RESETSTAT")
    sent = {}
    for i, (port, (a, b)) in enumerate(zip(masters, groups, strict=True)):
        count = 100 * (i + 1)
        for n in range(count):
            await (a.chat({"n": n}) if n % 2 else a.ice("p1", {"n": n}))
        assert [(await b.recv()).data["n"] for _ in range(count)] == list(range(count))
        sent[port] = count
    for port, room in zip(masters, rooms, strict=True):
        stats = commandstats(port)
        # every envelope of the room, and only those (leaves of earlier tests may trail)
        assert sent[port] <= stats.get("spublish", 0) <= sent[port] + 10, (port, stats)
        assert "publish" not in stats  # nothing is broadcast to every master
        assert int(info(port, "stats")["pubsub_channels"]) == 0
        channel = keys.room_channel(room)
        for other in masters:
            subscribers = cli(other, "PUBSUB", "SHARDNUMSUB", channel).split()[1]
            assert int(subscribers) == (2 if other == port else 0)
    print("SPUBLISH per master:", {p: commandstats(p).get("spublish", 0) for p in masters},
          "sent:", sent)
    await close_all(groups)


async def test_inspector_reads_rooms_and_nodes_on_every_master_and_watches_a_room(
    redis_cluster: ClusterServers, cluster_processes: list[NodeProcess]
) -> None:
    keys = Keys(cluster_processes[0].env["KEY_PREFIX"])
    rooms = [room_on(redis_cluster, keys, port) for port in redis_cluster.primaries()]
    env = {"REDIS_URL": redis_cluster.url, "KEY_PREFIX": keys.prefix}
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli.inspector", "watch", rooms[0], env={**os.environ, **env},
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert watcher.stdout is not None
    try:
        first = await asyncio.wait_for(watcher.stdout.readline(), 20)
        assert first.decode().startswith(f"watching {keys.room_channel(rooms[0])}")
        groups = await pairs_in(cluster_processes, rooms)
        lines = [(await asyncio.wait_for(watcher.stdout.readline(), 10)).decode()
                 for _ in range(3)]
        assert [line.split()[1] for line in lines] == ["join", "join", "chat"]
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(watcher.wait(), 10) == 0
    code, out = await inspect(cluster_processes, "rooms", "--json")
    listed = {r["room"]: r["peers"] for r in json.loads(out)}
    assert code == 0 and all(listed.get(room) == 2 for room in rooms)
    code, out = await inspect(cluster_processes, "nodes", "--json")
    nodes = {n["node"]: n for n in json.loads(out)}
    assert nodes["cproc0"]["alive"] and nodes["cproc0"]["peers"] >= len(rooms)
    await close_all(groups)


@pytest.mark.parametrize("with_reaper", [False, True], ids=["nodes-alone", "with-reaper"])
async def test_a_killed_node_is_reaped_on_every_master_with_its_room_events(
    redis_cluster: ClusterServers, cluster_processes: list[NodeProcess], with_reaper: bool
) -> None:
    """Without `workers.reaper` the surviving nodes sweep the dead one themselves."""
    prefix = f"kill{time.monotonic_ns() % 10**6}:"
    keys = Keys(prefix)
    # RESUME_SECONDS 0: the §3 bound itself (with resume, the grace comes first)
    env = {"REDIS_URL": redis_cluster.url, "KEY_PREFIX": prefix, "WEBHOOK_EVENTS": "1",
           "RESUME_SECONDS": "0"}
    nodes = [NodeProcess({**env, "NODE_ID": f"keep{i}"}) for i in range(2)]
    doomed = NodeProcess({**env, "NODE_ID": "doomed"})
    reaper = NodeProcess(env, argv=[sys.executable, "-m", "workers.reaper"])
    extra = [reaper] if with_reaper else []
    try:
        for proc in (*nodes, doomed, *extra):
            proc.start(wait_ready=False)
        for node in (*nodes, doomed):
            wait_until(node.is_ready, 15, f"node {node.url}")
        rooms = [room_on(redis_cluster, keys, port) for port in redis_cluster.primaries() * 2]
        groups = await pairs_in([nodes[0], doomed, nodes[1]], rooms)
        assert doomed.proc is not None
        doomed.proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(15):
            for a, _, c in groups:
                for survivor in (a, c):
                    assert summary([await survivor.recv(timeout=15)]) == [("peer-left", "p1")]
        for a, _, c in groups:
            got = await barrier([a, c])
            assert got[a] == [] and got[c] == []
        client = plain_client(redis_cluster.url)
        try:
            await reaped_everywhere(client, keys, rooms)
        finally:
            await close_client(client)
        await close_all(groups)
    finally:
        for proc in (*nodes, doomed, *extra):
            proc.close()


async def reaped_everywhere(client: object, keys: Keys, rooms: list[str]) -> None:
    assert isinstance(client, RedisCluster)
    for room in rooms:
        assert sorted(m.decode() for m in await client.smembers(keys.room_peers(room))) == [
            "p0", "p2"]
        assert await client.sismember(keys.rooms, room)
    left = [k async for k in client.scan_iter(match=f"{keys.prefix}node:{{doomed}}*")]
    assert left == []  # no key of the dead node on any master
    events = [{k.decode(): v.decode() for k, v in fields.items()}
              for _, fields in await client.xrange(keys.events)]
    gone = sorted(e["room"] for e in events if e["type"] == "peer-left" and e["peer"] == "p1")
    assert gone == sorted(rooms)


async def test_reaper_finishes_what_a_node_left_half_done(redis_cluster: ClusterServers) -> None:
    """The crash windows of cluster_steps.py, written into Redis as a dying node leaves
    them; one reaper sweep must leave only consistent state behind."""
    keys = Keys(f"half{time.monotonic_ns() % 10**6}:")
    client = plain_client(redis_cluster.url)
    assert isinstance(client, RedisCluster)
    try:
        steps = Steps(client.execute_command, keys)
        reaper = reaper_for(client, keys)
        await reaper.load_scripts()
        rooms = {name: unique(name) for name in ("before", "after", "left", "taken")}
        for room in rooms.values():
            await steps.index("dead", room, "x", add=True)
        # join died after its script, before listing: the membership is the dead node's
        await client.sadd(keys.room_peers(rooms["after"]), "x", "y")
        await client.hset(keys.room_conns(rooms["after"]), mapping={"x": "dead/c1",
                                                                     "y": "live/c2"})
        # leave died after its script, before relisting the now empty room
        await client.sadd(keys.rooms, rooms["left"])
        # another node's connection took the peer id over; its room is not listed yet
        await client.sadd(keys.room_peers(rooms["taken"]), "x")
        await client.hset(keys.room_conns(rooms["taken"]), "x", "live/c3")
        assert await reaper.sweep() == 1  # only `after`: the dead node still owned x there
        assert await client.smembers(keys.rooms) == {rooms["after"].encode(),
                                                     rooms["taken"].encode()}
        assert await client.smembers(keys.room_peers(rooms["after"])) == {b"y"}
        assert await client.hgetall(keys.room_conns(rooms["taken"])) == {b"x": b"live/c3"}
        assert not await client.exists(keys.node_peers("dead"))
        for room in (rooms["before"], rooms["left"]):
            assert not await client.exists(keys.room_peers(room), keys.room_conns(room))
    finally:
        await close_client(client)


# -- a cluster with replicas, whose topology these tests change --------------------------


@pytest.fixture(scope="module")
def ha_cluster() -> Iterator[tuple[ClusterServers, list[NodeProcess]]]:
    """3 masters with a replica each (node timeout 1 s), and two nodes on it."""
    servers = ClusterServers(masters=3, replicas=1, node_timeout_ms=1000).start()
    nodes = [NodeProcess({"REDIS_URL": servers.url, "NODE_ID": f"ha{i}", "KEY_PREFIX": "ha:"})
             for i in range(2)]
    try:
        for node in nodes:
            node.start(wait_ready=False)
        for node in nodes:
            wait_until(node.is_ready, 15, f"node {node.url}")
        yield servers, nodes
    finally:
        for node in nodes:
            node.close()
        servers.stop()


async def test_a_moved_slot_is_followed_and_signaling_resumes(
    ha_cluster: tuple[ClusterServers, list[NodeProcess]],
) -> None:
    servers, nodes = ha_cluster
    keys = Keys("ha:")
    source, target = servers.primaries()[:2]
    room = room_on(servers, keys, source, "moving")
    [clients] = await pairs_in(nodes, [room])
    await exchange(clients, "before")
    started = time.monotonic()
    move_slot(servers, key_slot(keys.room_channel(room).encode()), source, target)
    # the old master pushes `sunsubscribe`; each node resubscribes on the new one
    await eventually(lambda: subscribed_on(target, keys.room_channel(room), 2), 10,
                     "both nodes to subscribe on the new master")
    await wait_ready(n.url for n in nodes)
    print(f"slot moved to both nodes listening on the new master: "
          f"{time.monotonic() - started:.2f}s")
    assert cli(source, "PUBSUB", "SHARDNUMSUB", keys.room_channel(room)).split()[1] == "0"
    await exchange(clients, "after")
    members = cli(target, "SMEMBERS", keys.room_peers(room)).split()
    assert sorted(members) == ["p0", "p1"]
    await close_all([clients])


async def test_killing_a_master_fails_over_and_signaling_resumes(
    ha_cluster: tuple[ClusterServers, list[NodeProcess]],
) -> None:
    servers, nodes = ha_cluster
    keys = Keys("ha:")
    rooms = [room_on(servers, keys, port, "failover") for port in servers.primaries()]
    groups = await pairs_in(nodes, rooms)
    dead = servers.master_of(keys.rooms)  # the master of `sig:rooms` and of some rooms
    killed = time.monotonic()
    servers.server(dead).kill()
    servers.wait_failover(dead)
    promoted = time.monotonic() - killed
    # The worst a failover can lose is every write the replica had: start it empty.
    cli(servers.master_of(keys.rooms), "FLUSHALL")

    async def repaired() -> bool:
        for room in rooms:
            owner = servers.master_of(keys.room_peers(room))
            if sorted(cli(owner, "SMEMBERS", keys.room_peers(room)).split()) != ["p0", "p1"]:
                return False
        listed = cli(servers.master_of(keys.rooms), "SMEMBERS", keys.rooms).split()
        alive = [cli(servers.master_of(keys.node(f"ha{i}")), "EXISTS", keys.node(f"ha{i}"))
                 for i in range(2)]
        return sorted(listed) == sorted(rooms) and [a.strip() for a in alive] == ["1", "1"]

    await eventually(repaired, 20, "every membership and the room list to be re-created")
    await wait_ready(n.url for n in nodes)
    for clients, tag in zip(groups, ("r0", "r1", "r2"), strict=True):
        await exchange(clients, tag)  # every room, on the promoted master and the others
    print(f"master killed: replica promoted after {promoted:.2f}s, membership repaired and "
          f"signaling resumed after {time.monotonic() - killed:.2f}s")
    await close_all(groups)


def move_slot(servers: ClusterServers, slot: int, source: int, target: int) -> None:
    """Migrate one slot with its keys, as `redis-cli --cluster reshard` does."""
    ids = {port: cli(port, "CLUSTER", "MYID").strip() for port in (source, target)}
    cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source])
    cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target])
    names = cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "1000").split()
    if names:
        cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *names)
    for port in (target, source, *(p for p in servers.primaries() if p not in ids)):
        cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])


async def subscribed_on(port: int, channel: str, count: int) -> bool:
    return int(cli(port, "PUBSUB", "SHARDNUMSUB", channel).split()[1]) == count
