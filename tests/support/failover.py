"""Client-side checks shared by the failover tests (Redis Cluster, Sentinel)."""

from __future__ import annotations

from signaling_client.client import SignalingClient

from tests.support import peers
from tests.support.peers import barrier, summary
from tests.support.procs import NodeProcess


async def pairs_in(nodes: list[NodeProcess], rooms: list[str]) -> list[list[SignalingClient]]:
    out = []
    for room in rooms:
        clients = [await SignalingClient.connect(n.url, room, f"p{i}")
                   for i, n in enumerate(nodes)]
        await barrier(clients)
        out.append(clients)
    return out


async def exchange(clients: list[SignalingClient], tag: str) -> None:
    """A relay each way and a chat, all delivered, nothing else in between."""
    a, b = clients
    await a.ice("p1", {"tag": tag})
    assert summary([await b.recv()]) == [("ice", {"tag": tag})]
    await b.offer("p0", {"tag": tag})
    assert summary([await a.recv()]) == [("offer", {"tag": tag})]
    got = await barrier(clients)
    assert got[a] == [] and got[b] == []


async def close_all(groups: list[list[SignalingClient]]) -> None:
    await peers.close_all(*(client for clients in groups for client in clients))
