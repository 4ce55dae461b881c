"""`/metrics` moves with the traffic, scraped over HTTP from real nodes."""

from __future__ import annotations

from typing import Any

import aiohttp
from signaling_client.client import SignalingClient

from app.node import create_app
from tests.support.cluster import in_process, node_settings, unique
from tests.support.http import Scrape, scrape
from tests.support.peers import barrier
from tests.support.procs import NodeProcess, RedisServer
from tests.support.wait import eventually

FRAMES = "signaling_frames_total"
LATENCY = "signaling_relay_latency_seconds_count"


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


async def test_metrics_move_as_traffic_flows_between_node_processes(
    node_processes: list[NodeProcess], redis_server: RedisServer
) -> None:
    url0, url1 = (n.url for n in node_processes)
    room = unique("room")
    before0, before1 = await scrape(url0), await scrape(url1)
    a = await SignalingClient.connect(url0, room, "alice")
    b = await SignalingClient.connect(url1, room, "bob")
    await barrier([a, b])
    for i in range(5):
        await a.offer("bob", {"n": i})
    for i in range(3):
        await b.answer("alice", {"n": i})
    await a.send_raw("{not json")
    await a.offer("ghost", {})
    redis_server.cli("PUBLISH", f"{node_processes[0].env['KEY_PREFIX']}room:{{{room}}}", "junk")
    await barrier([a, b])
    during0, during1 = await scrape(url0), await scrape(url1)
    await a.close()
    await b.close()

    assert moved(before0, during0, FRAMES, type="offer", outcome="ok") == 5
    assert moved(before1, during1, FRAMES, type="answer", outcome="ok") == 3
    assert moved(before0, during0, FRAMES, type="invalid", outcome="bad-message") == 1
    assert moved(before0, during0, FRAMES, type="offer", outcome="peer-not-found") == 1
    assert moved(before0, during0, "signaling_errors_total", code="peer-not-found") == 1
    assert moved(before0, during0, "signaling_errors_total", code="bad-message") == 1
    # bob's node delivered alice's five offers, alice's node bob's three answers
    assert moved(before1, during1, LATENCY, kind="relay", path="remote") == 5
    assert moved(before0, during0, LATENCY, kind="relay", path="remote") == 3
    assert moved(before0, during0, LATENCY, kind="chat", path="local") == 2  # the barriers
    for before, during in ((before0, during0), (before1, during1)):
        assert moved(before, during, "signaling_envelopes_bad_total") == 1
        assert moved(before, during, "signaling_connections_total") == 1
        assert moved(before, during, "signaling_envelopes_received_total", kind="r") == 8
        assert during.get("signaling_peers") >= 1 and during.get("signaling_rooms") >= 1
        assert during.get("signaling_pubsub_subscriptions") >= 1
        assert during.get("signaling_ready") == 1 and during.get("signaling_draining") == 0
    [info] = during0.labels_of("signaling_build_info")
    assert info["node"] == "proc0" and info["backend"] == "redis" and info["version"]


async def test_gauges_follow_connections_and_each_node_has_its_own_registry(
    start_server: Any
) -> None:
    c = await in_process("memory", 2, start_server, None)
    room = unique("room")
    base0, base1 = await scrape(c.urls[0]), await scrape(c.urls[1])
    assert (base0.get("signaling_peers"), base1.get("signaling_peers")) == (0, 0)
    clients = [await SignalingClient.connect(c.urls[0], room, f"p{i}") for i in range(3)]
    await barrier(clients)
    now0, now1 = await scrape(c.urls[0]), await scrape(c.urls[1])
    assert (now0.get("signaling_peers"), now0.get("signaling_rooms")) == (3, 1)
    assert now0.get("signaling_pubsub_subscriptions") == 1
    assert moved(base0, now0, "signaling_connections_total") == 3
    assert now1.get("signaling_peers") == 0 and moved(base1, now1,
                                                      "signaling_connections_total") == 0
    for client in clients:
        await client.close()

    async def no_peers() -> bool:
        return (await scrape(c.urls[0])).get("signaling_peers") == 0

    await eventually(no_peers, what="the peers gauge to return to 0")


async def test_redis_errors_are_counted_and_ready_drops(start_server: Any) -> None:
    redis = RedisServer().start()
    try:
        c = await in_process("redis", 1, start_server, redis.url)
        a = await SignalingClient.connect(c.urls[0], unique("room"), "alice")
        redis.kill()
        await a.chat("hello?")
        assert (await a.next_of("error")).data["code"] == "unavailable"
        after = await scrape(c.urls[0])
        errors = sum(after.get("signaling_redis_errors_total", **labels)
                     for labels in after.labels_of("signaling_redis_errors_total"))
        assert errors >= 1  # the pub/sub connection usually notices first
        assert after.get("signaling_errors_total", code="unavailable") == 1
        assert after.get(FRAMES, type="chat", outcome="unavailable") == 1
        assert after.get("signaling_ready") == 0
        await a.close()
    finally:
        redis.close()
        if c.redis is not None:
            await c.redis.aclose()


async def test_a_peer_that_stops_reading_is_closed_and_counted(start_server: Any) -> None:
    # No byte rate: one sender alone has to fill the reader's queue here.
    server = await start_server(create_app(node_settings(0, send_queue_bytes=1024,
                                                         rate_limit_bytes_per_s=0)))
    url = str(server.make_url("")).rstrip("/")
    room = unique("room")
    async with aiohttp.ClientSession() as http:
        # a client that never reads: aiohttp stops reading its socket once its buffer fills
        slow = await http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws/{room}/slow")
        fast = await SignalingClient.connect(url, room, "fast")
        for _ in range(200):  # 10 MB for `slow`, more than the socket buffers hold
            await fast.offer("slow", "x" * 50_000)
        left = await fast.next_of("peer-left", timeout=20)
        assert left.data == "slow"
        after = await scrape(url)
        assert after.get("signaling_send_queue_overflows_total") == 1
        await fast.close()
        await slow.close()


def test_apps_never_share_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    one, two = create_app(node_settings(0)), create_app(node_settings(1))
    assert one is not two
    assert not any(m.name.startswith("signaling") for m in REGISTRY.collect())


def test_plain_latency_histogram_matches_prometheus_clients_own() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from app.obs.hotpath import LATENCY_BUCKETS
    from app.obs.metrics import NodeMetrics

    values = [0.0, 0.0005, 0.0007, 0.001, 0.003, 0.25, 0.2500001, 4.0, 5.0, 9.0]
    ours = NodeMetrics("n")
    reference = CollectorRegistry()
    histogram = Histogram("signaling_relay_latency_seconds", "x", ["kind", "path"],
                          buckets=LATENCY_BUCKETS, registry=reference)
    for value in values:
        ours.hot.observe(("chat", "remote"), value)
        histogram.labels("chat", "remote").observe(value)

    def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        got = Scrape(text).samples
        return {k: v for k, v in got.items()
                if k[0].startswith("signaling_relay_latency_seconds_") and "created" not in k[0]
                and ("kind", "chat") in k[1] and ("path", "remote") in k[1]}

    assert samples(ours.render().decode()) == samples(generate_latest(reference).decode())
