"""The admin API acts on the whole cluster, from any node, on every backend form."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from signaling_client.client import Closed, SignalingClient

from app.node import create_app
from tests.support.cluster import Cluster, node_settings, unique
from tests.support.http import admin
from tests.support.peers import barrier
from tests.support.wait import eventually


async def closed_with(client: SignalingClient) -> int | None:
    """Read until the node closes the connection; the close code it sent."""
    with pytest.raises(Closed) as closed:
        while True:
            await client.recv()
    await client.close()
    return closed.value.code


async def room_empties(cluster: Cluster, room: str) -> None:
    async def empty() -> bool:
        return not (await cluster.room_state(room))["peers"]

    await eventually(empty, what=f"room {room} to empty")


async def test_lists_rooms_peers_and_nodes_of_the_whole_cluster(cluster: Cluster) -> None:
    room = unique("room")
    a = await SignalingClient.connect(cluster.urls[0], room, "alice")
    b = await SignalingClient.connect(cluster.urls[1], room, "bob")
    await barrier([a, b])
    status, body = await admin(cluster.urls[1], "GET", "/admin/rooms")
    assert status == 200 and {"room": room, "peers": 2} in body["rooms"]
    status, body = await admin(cluster.urls[0], "GET", f"/admin/rooms/{room}")
    assert status == 200 and body["room"] == room
    assert [(p["peer"], p["node"]) for p in body["peers"]] == [("alice", a.node), ("bob", b.node)]
    status, body = await admin(cluster.urls[0], "GET", "/admin/nodes")
    nodes = {n["node"]: n for n in body["nodes"]}
    assert status == 200 and nodes[a.node]["alive"] and nodes[b.node]["alive"]
    assert nodes[a.node]["peers"] >= 1 and nodes[b.node]["peers"] >= 1
    assert (await admin(cluster.urls[0], "GET", "/admin/rooms/nobody-here"))[0] == 404
    await a.close()
    await b.close()


async def test_kick_through_one_node_closes_the_peer_on_another(cluster: Cluster) -> None:
    room = unique("room")
    a = await SignalingClient.connect(cluster.urls[0], room, "alice")
    b = await SignalingClient.connect(cluster.urls[1], room, "bob")
    await barrier([a, b])
    status, body = await admin(cluster.urls[0], "POST", f"/admin/rooms/{room}/peers/bob/kick")
    assert status == 202 and body["node"] == b.node and body["code"] == 4002
    assert await closed_with(b) == 4002
    assert (await a.recv()).raw == {"type": "peer-left", "room": room, "from": "server",
                                    "data": "bob"}
    assert (await cluster.room_state(room))["peers"] == ["alice"]
    status, body = await admin(cluster.urls[1], "POST", f"/admin/rooms/{room}/peers/bob/kick")
    assert status == 404 and body["error"]["code"] == "peer-not-found"
    await a.close()


async def test_close_room_closes_every_peer_on_every_node(cluster: Cluster) -> None:
    room = unique("room")
    clients = [await SignalingClient.connect(cluster.urls[i % 2], room, f"p{i}")
               for i in range(3)]
    await barrier(clients)
    status, body = await admin(cluster.urls[1], "POST", f"/admin/rooms/{room}/close",
                               body={"reason": "maintenance"})
    assert status == 202 and body == {"room": room, "peers": 3, "code": 4003,
                                      "reason": "maintenance"}
    assert [await closed_with(c) for c in clients] == [4003, 4003, 4003]
    await room_empties(cluster, room)
    assert (await admin(cluster.urls[0], "POST", f"/admin/rooms/{room}/close"))[0] == 404


async def test_refuses_without_the_token_or_with_a_wrong_one(cluster: Cluster) -> None:
    url = cluster.urls[0]
    for path, method in (("/admin/rooms", "GET"), ("/admin/nodes", "GET"),
                         ("/admin/rooms/r/peers/p/kick", "POST"), ("/admin/rooms/r/close", "POST")):
        status, body = await admin(url, method, path, token=None)
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body = await admin(url, method, path, token="wrong")
        assert (status, body["error"]["code"]) == (403, "forbidden")
    async with aiohttp.ClientSession() as http, http.get(
            f"{url}/admin/rooms", headers={"Authorization": "Basic dXNlcjpwYXNz"}) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await admin(url, "GET", "/admin/rooms/not%20an%20id"))[0] == 400


async def test_without_admin_token_the_api_does_not_exist(start_server: Any) -> None:
    server = await start_server(create_app(node_settings(0, admin_token=None)))
    url = str(server.make_url("")).rstrip("/")
    for token in (None, "anything"):
        status, body = await admin(url, "GET", "/admin/rooms", token=token)
        assert (status, body["error"]["code"]) == (404, "not-found")
