"""Session resume (contract §6) with real node processes on a real redis-server.

A connection that is lost (TCP cut, no close frame) is held for RESUME_SECONDS: nobody is
told, what is sent to it is kept, and `?resume=TOKEN` on any node goes on with the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from signaling_client.client import Closed, Refused, SignalingClient
from signaling_client.events import Frame, NewPeer, Offer, PeerLeft, ServerError, Welcome
from signaling_client.reconnect import Backoff, NotConnected, ReconnectingClient

from app.backends.rediswire.clients import close_client, plain_client
from tests.support.cluster import unique
from tests.support.http import scrape
from tests.support.peers import barrier, close_all, connect, drop, summary
from tests.support.procs import NodeProcess, RedisServer
from tests.support.wait import eventually, wait_until

GRACE = 3.0
BACKLOG = 100


def resume_nodes(redis: RedisServer | str, count: int, **env: str) -> list[NodeProcess]:
    url = redis if isinstance(redis, str) else redis.url
    prefix = unique("res") + ":"
    nodes = [NodeProcess({"REDIS_URL": url, "NODE_ID": unique(f"r{i}"),
                          "KEY_PREFIX": prefix, "RESUME_SECONDS": str(GRACE),
                          "RESUME_BACKLOG": str(BACKLOG), "NODE_TTL_SECONDS": "2", **env})
             for i in range(count)]
    for node in nodes:
        node.start(wait_ready=False)
    for node in nodes:
        wait_until(node.is_ready, 15, f"node {node.url}")
    return nodes


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer) -> Iterator[list[NodeProcess]]:
    nodes = resume_nodes(redis_server, 2)
    yield nodes
    for node in nodes:
        node.close()


async def held(node: NodeProcess, count: int) -> None:
    async def check() -> bool:
        return (await scrape(node.url)).get("signaling_held_sessions") == count
    await eventually(check, 5, f"{count} held sessions on {node.url}")


async def gone(client: SignalingClient) -> None:
    """The dropped client object notices its end; its HTTP session is closed."""
    with pytest.raises((Closed, TimeoutError)):
        while True:
            await client.recv(timeout=5)
    await client.close()


async def away(nodes: list[NodeProcess], tag: str) -> tuple[str, SignalingClient, str, float]:
    """A fresh room with a on nodes[0] and b on nodes[1], then b's TCP cut and noticed by
    the client: the room, a, b's resume token, and when b was cut (monotonic)."""
    room = unique(tag)
    a = await connect(nodes[0].url, room, "a")
    b = await connect(nodes[1].url, room, "b")
    token = b.resume_token
    assert token is not None
    await a.next_of("new-peer")
    drop(b)
    lost = time.monotonic()
    await gone(b)
    return room, a, token, lost


def relays(frames: list[Frame]) -> list[tuple[str, object]]:
    return [(f.type, f.data) for f in frames if f.type in ("offer", "chat")]


@pytest.mark.parametrize("where", ["same-node", "other-node"])
async def test_a_blip_loses_nothing_and_nobody_is_told(pair: list[NodeProcess],
                                                       where: str) -> None:
    room = unique("blip")
    a = await connect(pair[0].url, room, "a")
    watcher = await connect(pair[0].url, room, "w")
    b = await connect(pair[1].url, room, "b")
    token = b.resume_token
    assert token and len(token) >= 22 and b.welcome.data["resumed"] is False
    await a.next_of("new-peer")
    await watcher.next_of("new-peer")
    drop(b)
    await gone(b)
    await held(pair[1], 1)
    sent: list[tuple[str, object]] = []
    for i in range(50):  # 50 offers and 20 chats while b is away, mixed
        await a.offer("b", {"n": i})
        sent.append(("offer", {"n": i}))
        if i % 5 == 4:
            await a.chat(f"c{i}")
            sent.append(("chat", f"c{i}"))
    await a.ping()
    await a.next_of("pong")  # a's frames are in Redis's order before the resume
    target = pair[1] if where == "same-node" else pair[0]
    b2 = await connect(target.url, room, "b", resume=token)
    assert b2.resumed and b2.resume_token not in (None, token)
    assert sorted(b2.peers) == ["a", "w"]
    await a.offer("b", {"n": "live"})
    got = [await b2.recv() for _ in range(len(sent) + 1)]
    assert relays(got) == [*sent, ("offer", {"n": "live"})]  # in order, none twice
    await b2.offer("a", "back")  # it knows a (handed over), so it may send to it
    assert (await a.next_of("offer")).data == "back"
    seen = await barrier([a, watcher, b2], via=a)
    for client in (a, watcher, b2):
        assert not [f for f in seen[client] if f.type in ("peer-left", "new-peer")], \
            summary(seen[client])
    assert not [f for f in seen[b2] if f.type == "offer"]  # nothing came twice
    await held(pair[1], 0)
    await close_all(a, watcher, b2)


@pytest.mark.parametrize("where", ["same-node", "other-node"])
async def test_a_resume_while_the_old_connection_still_looks_alive_takes_it_over(
        pair: list[NodeProcess], where: str) -> None:
    """The client noticed the loss before its node did (a half-open TCP connection): the
    resume closes the old connection with 4001 and goes on; nobody else is told."""
    room = unique("halfopen")
    a = await connect(pair[0].url, room, "a")
    b = await connect(pair[1].url, room, "b")
    await a.next_of("new-peer")
    await a.offer("b", "before")
    assert (await b.recv()).data == "before"
    target = pair[1] if where == "same-node" else pair[0]
    b2 = await connect(target.url, room, "b", resume=b.resume_token)
    assert b2.resumed
    with pytest.raises(Closed) as closed:
        while True:
            await b.recv(timeout=5)
    assert closed.value.code == 4001
    await b.close()
    await a.offer("b", "after")
    assert (await b2.recv()).data == "after"
    seen = await barrier([a, b2], via=a)
    assert summary(seen[a]) == [] and summary(seen[b2]) == []
    await close_all(a, b2)


async def test_a_stale_or_wrong_token_is_an_ordinary_join(pair: list[NodeProcess]) -> None:
    room, a, first, _ = await away(pair, "stale")
    b = await connect(pair[0].url, room, "b", resume=first)
    assert b.resumed  # the newest token: it resumes, and gets a new one
    drop(b)
    await gone(b)
    for token in (first, "x" * 22):  # the old one is stale now; the other never was
        b = await connect(pair[1].url, room, "b", resume=token)
        assert not b.resumed and b.welcome.data["resumed"] is False
        # the old membership existed: renegotiate, as for a takeover
        assert summary([await a.recv(), await a.recv()]) == [("peer-left", "b"),
                                                            ("new-peer", "b")]
        drop(b)
        await gone(b)
    await close_all(a)


async def test_an_unresumed_session_is_announced_within_the_grace(
        pair: list[NodeProcess]) -> None:
    room, a, token, lost = await away(pair, "expire")
    left = await a.next_of("peer-left", timeout=GRACE + 5)
    waited = time.monotonic() - lost
    assert left.data == "b"
    assert GRACE - 0.5 <= waited <= GRACE + 2, waited
    print(f"lost connection to peer-left, RESUME_SECONDS={GRACE}: {waited:.2f}s")
    b = await connect(pair[0].url, room, "b", resume=token)  # too late: a fresh join
    assert not b.resumed
    assert (await a.next_of("new-peer")).data == "b"
    await close_all(a, b)


async def test_an_overflowing_backlog_ends_the_session(pair: list[NodeProcess]) -> None:
    room, a, token, _ = await away(pair, "overflow")
    await held(pair[1], 1)
    for i in range(BACKLOG + 1):
        await a.offer("b", i)
    assert (await a.next_of("peer-left")).data == "b"  # at once, not after the grace
    b = await connect(pair[1].url, room, "b", resume=token)
    assert not b.resumed
    await close_all(a, b)


async def test_a_client_that_closes_leaves_at_once(pair: list[NodeProcess]) -> None:
    room = unique("bye")
    a = await connect(pair[0].url, room, "a")
    b = await connect(pair[1].url, room, "b")
    await a.next_of("new-peer")
    started = time.monotonic()
    await b.close()  # its own close frame: a departure, not a blip
    assert (await a.next_of("peer-left")).data == "b"
    assert time.monotonic() - started < 1
    await close_all(a)


async def test_a_node_restarted_under_its_id_ends_its_earlier_runs_sessions(
        pair: list[NodeProcess]) -> None:
    """kill -9 and an immediate restart with the same NODE_ID: the node is alive, so no
    sweep takes its old memberships; it ends them itself once their grace is over."""
    room = unique("restart")
    a = await connect(pair[0].url, room, "a")
    b = await connect(pair[1].url, room, "b")
    await a.next_of("new-peer")
    pair[1].kill()
    killed = time.monotonic()
    await gone(b)
    await asyncio.to_thread(pair[1].start)
    left = await a.next_of("peer-left", timeout=GRACE + 10)
    assert left.data == "b"
    assert time.monotonic() - killed <= GRACE + 2 + 1.5  # + the restart itself
    await close_all(a)


async def test_a_drain_keeps_sessions_held_that_do_not_come_back_for_the_grace(
        redis_server: RedisServer) -> None:
    """A drained node's held session whose client never returns is not announced by the
    drain; the others' sweep announces it once the grace from its loss is over (the
    grace is longer than the node takes to stop: it does not wait for sessions lost before
    its drain)."""
    grace = 3.0
    nodes = resume_nodes(redis_server, 2, RESUME_SECONDS=str(grace))
    try:
        _, a, _, lost = await away(nodes, "drain")
        await held(nodes[1], 1)
        await asyncio.to_thread(nodes[1].stop)
        assert time.monotonic() - lost < 0.2 + 5  # DRAIN_SECONDS + 5
        await a.ping()
        before = []
        while (frame := await a.recv()).type != "pong":
            before.append(frame)
        assert summary(before) == []  # the drain announced nothing
        left = await a.next_of("peer-left", timeout=grace + 5)
        took = time.monotonic() - lost
        assert left.data == "b" and grace - 1 <= took <= grace + 2, took
        await close_all(a)
    finally:
        for node in nodes:
            node.close()


async def test_held_sessions_count_against_the_clients_connection_limit(
        redis_server: RedisServer) -> None:
    """Dropping connections in a loop cannot pile up held sessions: each keeps its slot
    (MAX_CONNS_PER_IP) until it resumes or ends."""
    node = resume_nodes(redis_server, 1, MAX_CONNS_PER_IP="2", RESUME_SECONDS="2")[0]
    try:
        room = unique("slots")
        for name in ("p1", "p2"):
            client = await connect(node.url, room, name)
            drop(client)
            await gone(client)
        # (no scrape of /metrics to wait on: its connection would count against the cap)
        async def refused() -> bool:
            try:
                await close_all(await connect(node.url, room, "p3"))  # not noticed yet
            except Refused as exc:
                assert exc.status == 429
                return True
            except (aiohttp.ClientError, OSError):
                return True  # at its cap, the client address is cut at accept
            return False
        await eventually(refused, 5, "the held sessions to keep their slots")
        members = redis_server.cli("SMEMBERS", f"{node.env['KEY_PREFIX']}room:{{{room}}}:peers")
        assert sorted(members.split()) == ["p1", "p2"]

        async def admitted() -> bool:  # the grace is over: both announced, slots given back
            with contextlib.suppress(Refused, aiohttp.ClientError, OSError):
                await close_all(await connect(node.url, room, "p3"))
                return True
            return False
        await eventually(admitted, 2 + 3, "the slots back after the grace")
    finally:
        node.close()


@pytest.fixture(params=["redis", "rediscluster"])
async def trio(request: pytest.FixtureRequest) -> AsyncIterator[list[NodeProcess]]:
    """Three nodes on one redis-server, or on a Redis Cluster (3 masters)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = request.getfixturevalue("redis_cluster").url
    nodes = resume_nodes(url, 3, RESUME_SECONDS="4")
    yield nodes
    for node in nodes:
        node.close()


async def redis_state(url: str, prefix: str, room: str, node: str) -> tuple[list[str], list[str]]:
    """The room's members, and every key of `node` (on every master of a cluster)."""
    client = plain_client(url)
    try:
        raw = await client.smembers(f"{prefix}room:{{{room}}}:peers")
        members = sorted(m.decode() for m in raw)
        keys = [k async for k in client.scan_iter(match=f"{prefix}node:{{{node}}}*")]
        return members, keys
    finally:
        await close_client(client)


async def test_a_crashed_nodes_peers_resume_elsewhere_or_leave_after_the_grace(
        trio: list[NodeProcess]) -> None:
    """kill -9, no reaper: the nodes alone hold the dead node's peers for the grace."""
    room = unique("crash")
    a = await connect(trio[0].url, room, "a")
    b = await connect(trio[1].url, room, "b")
    x = await connect(trio[2].url, room, "x")
    y = await connect(trio[2].url, room, "y")
    token = x.resume_token
    await barrier([a, b, x, y], via=y)  # every join is through
    dead = trio[2].env["NODE_ID"]
    trio[2].kill()
    crashed = time.monotonic()
    for client in (x, y):
        with pytest.raises((Closed, TimeoutError)):
            await client.recv(timeout=5)
        await client.close()
    x = await connect(trio[0].url, room, "x", resume=token)
    assert x.resumed  # the dead node cannot hand over: what it had is what there is
    await a.offer("x", "after")
    await b.offer("x", "after-b")
    assert {(await x.recv()).data, (await x.recv()).data} == {"after", "after-b"}
    for client in (a, b):
        left = await client.next_of("peer-left", timeout=10)
        assert left.data == "y"
        took = time.monotonic() - crashed
        assert took <= 4 + 2, took
    print(f"kill -9, no reaper, RESUME_SECONDS=4 ({trio[0].env['REDIS_URL'][:14]}): resumed "
          f"elsewhere, the other peer's peer-left {took:.2f}s after the crash")
    seen = await barrier([a, b, x], via=a)
    for client in (a, b, x):
        assert ("peer-left", "x") not in summary(seen[client])
    members, keys = await redis_state(trio[0].env["REDIS_URL"], trio[0].env["KEY_PREFIX"],
                                      room, dead)
    assert keys == []  # no key of the dead node remains (on any master)
    assert members == ["a", "b", "x"]
    await close_all(a, b, x)


async def test_a_rolling_restart_under_relay_load_ends_no_call(trio: list[NodeProcess]) -> None:
    """Every node restarted in turn (SIGTERM: drain, 1001, held for resume) while pairs
    relay numbered frames; clients resume on whichever node answers."""
    room = unique("rolling")
    urls = [n.url for n in trio]
    names = [f"p{i}" for i in range(6)]
    clients = [ReconnectingClient(urls[i % 3:] + urls[:i % 3], room, name,
                                  backoff=Backoff(first=0.05, cap=0.5))
               for i, name in enumerate(names)]
    received: dict[str, list[object]] = {name: [] for name in names}
    notices: list[tuple[str, str, object]] = []
    welcomes: dict[str, list[bool]] = {name: [] for name in names}

    async def listen(client: ReconnectingClient) -> None:
        async for event in client.events():
            match event:
                case Welcome(resumed=resumed):
                    welcomes[client.peer or ""].append(resumed)
                case Offer(sdp=data):
                    received[client.peer or ""].append(data)
                case NewPeer(peer=p) | PeerLeft(peer=p):
                    notices.append((client.peer or "", type(event).__name__, p))
                case ServerError() as error:
                    errors.append(error)

    errors: list[ServerError] = []
    listeners = []
    for client in clients:
        listeners.append(asyncio.create_task(listen(client)))
        await client.connected()

    async def partners_known() -> bool:
        return all((f"p{i}", "NewPeer", f"p{i + 1}") in notices for i in (0, 2, 4))
    await eventually(partners_known, 5, "each sender told of its receiver")
    sent: dict[str, int] = {}
    stop = asyncio.Event()

    async def pump(sender: ReconnectingClient, to: str) -> None:
        n = 0
        while not stop.is_set():
            try:
                await sender.offer(to, n)
            except NotConnected:
                await sender.connected()  # resend the same number on the next connection
                continue
            n += 1
            await asyncio.sleep(0.005)
        sent[to] = n

    # p0 -> p1, p2 -> p3, p4 -> p5: each pair across two nodes
    pumps = [asyncio.create_task(pump(clients[i], names[i + 1])) for i in (0, 2, 4)]
    try:
        for node in trio:
            await asyncio.to_thread(node.stop)
            await asyncio.to_thread(node.start)
            for client in clients:
                await asyncio.wait_for(client.connected(), 10)
        stop.set()
        await asyncio.gather(*pumps)
        for sender, to in ((clients[0], "p1"), (clients[2], "p3"), (clients[4], "p5")):
            await sender.chat(f"end-{to}")
        async def complete() -> bool:
            return all(len(received[to]) >= sent[to] for to in sent)
        await eventually(complete, 10, "every frame delivered")
    finally:
        for task in listeners:  # first: the clients' own closes are real departures
            task.cancel()
        for client in clients:
            await client.close()
    for to, n in sent.items():
        assert received[to] == list(range(n)), f"{to}: lost or duplicated frames"
        assert n > 100
    assert [n for n in notices if n[1] == "PeerLeft"] == []
    assert len(notices) == len(set(notices)) == 15  # each join announced once, no more
    assert errors == []
    for name in names:
        assert welcomes[name][0] is False and all(welcomes[name][1:]), welcomes
    moves = sum(len(w) - 1 for w in welcomes.values())
    assert moves >= 6  # every client moved at least once
    print(f"rolling restart of 3 nodes ({trio[0].env['REDIS_URL'][:14]}): "
          f"{sum(sent.values())} relays in 3 pairs, "
          f"{moves} resumes, 0 lost, 0 duplicated, 0 peer-left")
