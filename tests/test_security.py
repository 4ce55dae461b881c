"""Each security control (README "Security") through real clients and raw HTTP requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from signaling_client.client import Refused, SignalingClient

from tests.support.cluster import Cluster, NodeFactory, ServerFactory, in_process, unique
from tests.support.nginx import NginxProcess
from tests.support.peers import barrier, close_all, connect, refusal, until_closed
from tests.support.procs import NodeProcess
from tests.support.tokens import SECRET, mint
from tests.support.wait import retried, wait_until

# -- limits ------------------------------------------------------------------------------


async def metric(http: aiohttp.ClientSession, url: str, line: str) -> float:
    """The value of one sample line of the node's /metrics (0 if absent)."""
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    return next((float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                 if x.startswith(line + " ")), 0.0)


async def test_flooding_peer_is_rate_limited_then_closed_with_1008(
    make_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    url = await make_node(rate_limit_per_s=0.001, rate_limit_burst=3, rate_limit_strikes=3)
    watcher = await connect(url, "room", "watcher")
    flood = await connect(url, "room", "flood")
    await watcher.next_of("new-peer")
    for _ in range(3):
        await flood.ping()
    assert [(await flood.recv()).type for _ in range(3)] == ["pong"] * 3
    await flood.ping()
    await flood.ws.send_bytes(b"binary frames count too")
    assert [(await flood.recv()).data["code"] for _ in range(2)] == ["rate-limited"] * 2
    await flood.ping()  # the third strike in a row
    frames, code = await until_closed(flood)
    assert frames == [] and code == 1008
    assert (await watcher.next_of("peer-left")).data == "flood"
    assert await metric(http, url, "signaling_rate_limit_closes_total") == 1
    await close_all(watcher, flood)


async def test_json_nested_deeper_than_the_limit_is_bad_message(make_node: NodeFactory) -> None:
    url = await make_node(max_json_depth=4)
    a = await connect(url, "room", "alice")
    await a.chat([[{}]])  # frame object, list, list, object: 4 levels
    assert (await a.recv()).data == [[{}]]
    await a.chat([[[[]]]])
    err = await a.recv()
    assert err.data["code"] == "bad-message" and "deeper" in err.data["message"]
    await a.ping()
    assert (await a.recv()).type == "pong"
    await a.close()


async def test_connections_per_client_address_are_capped_with_429(
    make_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    url = await make_node(max_conns_per_ip=2)
    a = await connect(url, "room", "a")
    b = await connect(url, "other", "b")
    status, body = await refusal(http, f"{url}/ws/room/c")
    assert status == 429 and body["error"]["code"] == "too-many-connections"
    with pytest.raises(Refused) as refused:  # no proxy is trusted: the header changes nothing
        await connect(url, "room", "c", headers={"X-Forwarded-For": "203.0.113.9"})
    assert refused.value.status == 429
    line = 'signaling_upgrades_refused_total{code="too-many-connections"}'
    assert await metric(http, url, line) == 2
    await a.close()
    c = await retried(Refused, lambda: connect(url, "room", "c"))
    await close_all(b, c)


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    make_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    url = await make_node(max_conns_per_ip=1, trusted_proxies=("10.0.0.0/8", "127.0.0.1"))

    def via(chain: str) -> dict[str, str]:
        return {"X-Forwarded-For": chain}

    a = await connect(url, "room", "a", headers=via("203.0.113.1"))
    # the same client: directly, through a second trusted hop, or with a forged left part
    for chain in ("203.0.113.1", "203.0.113.1, 10.1.2.3", "198.51.100.7, 203.0.113.1"):
        status, body = await refusal(http, f"{url}/ws/room/x", via(chain))
        assert (status, body["error"]["code"]) == (429, "too-many-connections"), chain
    b = await connect(url, "room", "b", headers=via("198.51.100.7, 203.0.113.2"))
    c = await connect(url, "room", "c")  # no header: the proxy's own address
    status, _ = await refusal(http, f"{url}/ws/room/x")
    assert status == 429
    await close_all(a, b, c)


@pytest.fixture(params=["memory", "redis"])
async def capped(request: pytest.FixtureRequest, start_server: ServerFactory
                 ) -> AsyncIterator[Cluster]:
    """Two nodes whose rooms hold at most three peers, on the memory hub or a real Redis."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    c = await in_process(request.param, 2, start_server, url, room_max_peers=3)
    yield c
    await c.close()


async def test_room_capacity_holds_across_nodes(capped: Cluster, http: aiohttp.ClientSession
                                                ) -> None:
    room = unique("full")
    a = await connect(capped.urls[0], room, "a")
    b = await connect(capped.urls[1], room, "b")
    c = await connect(capped.urls[1], room, "c")
    for url in capped.urls:
        status, body = await refusal(http, f"{url}/ws/{room}/d")
        assert (status, body["error"]["code"]) == (409, "room-full")
    b2 = await connect(capped.urls[0], room, "b")  # a peer id reconnecting is let in
    assert (await until_closed(b))[1] == 4001
    await a.close()
    d = await retried(Refused, lambda: connect(capped.urls[1], room, "d"))
    assert sorted(d.peers) == ["b", "c"]
    await close_all(b, b2, c, d)


async def test_concurrent_joins_never_overfill_a_room(capped: Cluster) -> None:
    room = unique("race")
    results = await asyncio.gather(
        *(connect(capped.urls[i % 2], room, f"p{i}") for i in range(12)), return_exceptions=True)
    joined = [r for r in results if isinstance(r, SignalingClient)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(joined) == 3 and len(refused) == 9
    assert {r.status for r in refused} == {409}
    assert len((await capped.room_state(room))["peers"]) == 3
    await close_all(*joined)


async def test_rooms_per_node_cap_answers_503_node_full(
    make_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    url = await make_node(max_rooms_per_node=2)
    a = await connect(url, "r1", "a")
    b = await connect(url, "r2", "b")
    status, body = await refusal(http, f"{url}/ws/r3/c")
    assert (status, body["error"]["code"]) == (503, "node-full")
    a2 = await connect(url, "r1", "a2")  # rooms already hosted stay open
    await close_all(a, a2)
    c = await retried(Refused, lambda: connect(url, "r3", "c"))
    await close_all(b, c)


# -- origins, CORS, what the HTTP endpoints reveal --------------------------------------


async def test_cors_headers_only_for_allowed_origins(url: str, http: aiohttp.ClientSession
                                                     ) -> None:
    allowed, foreign = "http://localhost:3000", "https://evil.example"
    for path in ("/health", "/ready", "/metrics"):
        async with http.get(url + path, headers={"Origin": allowed}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == allowed
            assert "Origin" in r.headers["Vary"]
        for headers in ({"Origin": foreign}, {}):
            async with http.get(url + path, headers=headers) as r:
                assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    async with http.options(f"{url}/health", headers={"Origin": allowed, **preflight}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == allowed
        assert "GET" in r.headers["Access-Control-Allow-Methods"]
    async with http.options(f"{url}/health", headers={"Origin": foreign, **preflight}) as r:
        assert r.status != 204 and "Access-Control-Allow-Origin" not in r.headers


async def test_health_and_ready_reveal_nothing_but_a_status_and_their_own_id(
    make_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    url = await make_node(node_id="n-self", allowed_origins=("https://ok.example",),
                          trusted_proxies=("10.9.8.0/24",), auth_secret=SECRET)
    for path, body in (("/health", {"status": "ok"}), ("/ready", {"status": "ready"})):
        async with http.get(url + path) as r:
            assert await r.json() == body
            assert r.headers["Server"] == "signaling"  # no library versions
            assert r.headers["X-Node-Id"] == "n-self"  # as in every welcome
            headers = str(dict(r.headers))
            assert all(x not in headers for x in ("ok.example", "10.9.8", SECRET, "Python"))


async def test_foreign_origin_is_refused_even_with_a_valid_token(
    make_node: NodeFactory, http: aiohttp.ClientSession
) -> None:
    url = await make_node(auth_secret=SECRET)
    status, body = await refusal(http, f"{url}/ws/r/alice?token={mint('r', 'alice')}",
                                 {"Origin": "https://evil.example"})
    assert (status, body["error"]["code"]) == (403, "forbidden-origin")


# -- a peer reaches only its own room ---------------------------------------------------


async def test_a_peer_reaches_only_its_own_room_whatever_ids_it_writes(cluster: Cluster
                                                                        ) -> None:
    ra, rb = unique("a"), unique("b")
    mallory = await connect(cluster.urls[0], ra, "mallory")
    alice_a = await connect(cluster.urls[1], ra, "alice")
    alice_b = await connect(cluster.urls[0], rb, "alice")  # same peer id, other room
    bob_b = await connect(cluster.urls[1], rb, "bob")
    await barrier([mallory, alice_a])
    await barrier([alice_b, bob_b])
    for kind in ("offer", "answer", "ice"):
        await mallory.send_raw(json.dumps({"type": kind, "to": "alice", "room": rb,
                                           "from": "bob", "data": {"k": kind}}))
        assert (await alice_a.recv()).raw == {"type": kind, "room": ra, "from": "mallory",
                                              "to": "alice", "data": {"k": kind}}
    await mallory.send_raw(json.dumps({"type": "offer", "to": "bob", "room": rb, "data": 1}))
    assert (await mallory.recv()).data["code"] == "peer-not-found"
    await mallory.send_raw(json.dumps({"type": "chat", "room": rb, "from": "server",
                                       "data": "hi"}))
    for client in (mallory, alice_a):
        assert (await client.recv()).raw == {"type": "chat", "room": ra, "from": "mallory",
                                             "data": "hi"}
    got = await barrier([alice_b, bob_b])
    assert got[alice_b] == [] and got[bob_b] == []
    await close_all(mallory, alice_a, alice_b, bob_b)


# -- behind the real nginx ------------------------------------------------------------------


@pytest.fixture(scope="module")
def behind_nginx() -> Iterator[NginxProcess]:
    """One node process behind the repository's nginx.conf, trusting it (127.0.0.1) only.

    Clients connect from other loopback addresses (127.0.0.2, 127.0.0.3), so the node can
    tell them from the proxy exactly as it would tell internet clients from nginx.
    """
    node = NodeProcess({"TRUSTED_PROXIES": "127.0.0.1", "MAX_CONNS_PER_IP": "1",
                        "AUTH_SECRET": SECRET})
    nginx = NginxProcess([node.port])
    try:
        node.start()
        yield nginx.start()
    finally:
        nginx.cleanup()
        node.close()


def from_address(ip: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))


async def test_behind_nginx_limits_count_the_real_client_and_tokens_stay_out_of_the_log(
    behind_nginx: NginxProcess
) -> None:
    url, room = behind_nginx.url, unique("proxied")
    async with from_address("127.0.0.2") as two, from_address("127.0.0.3") as three:
        a = await connect(url, room, "a", session=two, token=mint(room, "a"),
                          headers={"X-Forwarded-For": "198.51.100.1"})
        # the same client forging another address is still the same client
        with pytest.raises(Refused) as refused:
            await connect(url, room, "b", session=two, token=mint(room, "b"),
                          headers={"X-Forwarded-For": "198.51.100.2"})
        assert refused.value.status == 429
        c = await connect(url, room, "c", session=three, token=mint(room, "c"))
        assert c.peers == ["a"]
        await close_all(a, c)

    def logged() -> list[str]:
        return [e["uri"] for e in behind_nginx.access_entries() if room in e["uri"]]

    await asyncio.to_thread(wait_until, lambda: len(logged()) == 3, 10, "nginx's access log")
    assert sorted(logged()) == [f"/ws/{room}/{p}" for p in "abc"]  # no ?token=
