"""`python -m app.cli.inspector` against real node processes and their redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from signaling_client.client import SignalingClient

from tests.support.cluster import unique
from tests.support.peers import barrier
from tests.support.procs import ROOT, NodeProcess, RedisServer


def inspector_env(nodes: list[NodeProcess]) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": nodes[0].env["REDIS_URL"],
            "KEY_PREFIX": nodes[0].env["KEY_PREFIX"]}


async def inspect(nodes: list[NodeProcess], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli.inspector", *args, cwd=ROOT, env=inspector_env(nodes),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert not err, err.decode()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_watch_decodes_a_rooms_live_envelopes(
    node_processes: list[NodeProcess], redis_server: RedisServer
) -> None:
    room = unique("room")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli.inspector", "watch", room, cwd=ROOT,
        env=inspector_env(node_processes), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert first.decode().startswith(f"watching {node_processes[0].env['KEY_PREFIX']}room:")
        a = await SignalingClient.connect(node_processes[0].url, room, "alice")
        b = await SignalingClient.connect(node_processes[1].url, room, "bob")
        await barrier([a, b])
        await a.offer("bob", {"sdp": "v=0 é"})
        await b.recv()
        redis_server.cli("PUBLISH", f"{node_processes[0].env['KEY_PREFIX']}room:{{{room}}}",
                         "junk")
        await b.close()
        await a.next_of("peer-left")
        await a.close()
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 10)).decode().rstrip("\n")
                 for _ in range(7)]
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    kinds = [line.split()[1] for line in lines]
    assert kinds == ["join", "join", "chat", "relay", "BAD", "leave", "leave"]
    assert "alice node=proc0" in lines[0] and "bob node=proc1" in lines[1]
    chat = json.loads(lines[2].split(maxsplit=4)[4])
    assert chat["type"] == "chat" and chat["from"] == "alice" and chat["room"] == room
    assert lines[3].split()[2:5] == ["->", "bob", "node=proc0"]
    assert json.loads(lines[3].split(maxsplit=6)[6]) == {
        "type": "offer", "room": room, "from": "alice", "to": "bob", "data": {"sdp": "v=0 é"}}
    assert "4 bytes" in lines[4] and "bob node=proc1" in lines[5]


async def test_rooms_room_and_nodes_show_the_cluster(node_processes: list[NodeProcess]) -> None:
    room = unique("room")
    a = await SignalingClient.connect(node_processes[0].url, room, "alice")
    b = await SignalingClient.connect(node_processes[1].url, room, "bob")
    await barrier([a, b])
    code, out = await inspect(node_processes, "rooms", "--json")
    assert code == 0 and {"room": room, "peers": 2} in json.loads(out)
    code, out = await inspect(node_processes, "room", room)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["PEER", "NODE", "CONN"]
    assert [line.split()[:2] for line in lines[1:]] == [["alice", "proc0"], ["bob", "proc1"]]
    code, out = await inspect(node_processes, "nodes", "--json")
    nodes = {n["node"]: n for n in json.loads(out)}
    assert code == 0 and nodes["proc0"]["alive"] and nodes["proc0"]["peers"] >= 1
    assert nodes["proc1"]["pid"] == node_processes[1].proc.pid  # type: ignore[union-attr]
    await a.close()
    await b.close()
    code, out = await inspect(node_processes, "room", unique("empty"))
    assert (code, out.strip()) == (1, "(none)")
