"""The Python client library: typed events, and ReconnectingClient against real node
processes that drain (1001), die (kill -9) or see the same peer id connect elsewhere."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
from signaling_client.client import Refused, SignalingClient
from signaling_client.events import (
    Answer,
    Chat,
    Disconnected,
    Event,
    Ice,
    NewPeer,
    Offer,
    PeerLeft,
    Pong,
    ServerError,
    Welcome,
)
from signaling_client.reconnect import Backoff, ReconnectingClient

from app.config.settings import Settings
from app.node import create_app
from tests.conftest import StartServer
from tests.support.cluster import unique
from tests.support.peers import barrier, summary
from tests.support.procs import NodeProcess, RedisServer, free_port
from tests.support.wait import ready_status, wait_until

FAST = Backoff(first=0.05, cap=0.5)


async def test_every_frame_a_node_sends_has_a_typed_event(start_server: StartServer) -> None:
    settings = Settings(node_id="n1", ice_stun_urls=("stun:stun.example.org:3478",))
    server = await start_server(create_app(settings))  # the embedded in-memory backend
    url = str(server.make_url(""))
    async with await SignalingClient.connect(url, "r1", "alice") as a:
        assert a.welcome_event == Welcome(
            "r1", "alice", (), "n1", ({"urls": ["stun:stun.example.org:3478"]},))
        async with await SignalingClient.connect(url, "r1", "bob") as b:
            assert b.welcome_event.peers == ("alice",)
            events = a.events()
            assert await anext(events) == NewPeer("bob")
            await b.offer("alice", {"type": "offer", "sdp": "v=0"})
            await b.answer("alice", {"type": "answer", "sdp": "v=0"})
            await b.ice("alice", {"candidate": "candidate:1", "sdpMid": "0"})
            await b.chat("hi")
            expected = [Offer("bob", {"type": "offer", "sdp": "v=0"}),
                        Answer("bob", {"type": "answer", "sdp": "v=0"}),
                        Ice("bob", {"candidate": "candidate:1", "sdpMid": "0"}),
                        Chat("bob", "hi")]
            assert [await anext(events) for _ in expected] == expected
            await a.ping()
            assert await anext(events) == Pong()
            await a.offer("nobody", {})
            error = await anext(events)
            assert isinstance(error, ServerError) and error.code == "peer-not-found"
        assert await anext(events) == PeerLeft("bob")


@pytest.fixture(scope="module")
def node_pair(redis_server: RedisServer) -> Iterator[list[NodeProcess]]:
    prefix = f"{unique('cl')}:"
    nodes = [NodeProcess({"REDIS_URL": redis_server.url, "KEY_PREFIX": prefix,
                          "NODE_ID": f"cl{i}"}) for i in range(2)]
    for node in nodes:
        node.start(wait_ready=False)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.close()


@pytest.fixture
def nodes(node_pair: list[NodeProcess]) -> Iterator[list[NodeProcess]]:
    """Both nodes ready; a node the test stopped is started again (same port) after it."""
    for node in node_pair:
        wait_until(node.is_ready, 15, f"node {node.url}")
    yield node_pair
    for node in node_pair:
        if node.proc is not None and node.proc.poll() is None and ready_status(node.url) == 200:
            continue
        node.stop()  # waits for a draining node to finish
        node.start()




@pytest.fixture
async def watched(nodes: list[NodeProcess]) -> AsyncIterator[tuple[str, SignalingClient]]:
    """A fresh room with a watcher on node 1."""
    room = unique("room")
    async with await SignalingClient.connect(nodes[1].url, room, "watcher") as watcher:
        yield room, watcher


async def next_event(events: AsyncIterator[Event], timeout: float = 10.0) -> Event:
    async with asyncio.timeout(timeout):
        return await anext(events)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["drain", "kill-9"])
async def test_resumes_on_another_node_as_the_same_peer_when_its_node_goes(
    nodes: list[NodeProcess], watched: tuple[str, SignalingClient], how: signal.Signals,
) -> None:
    room, watcher = watched
    async with ReconnectingClient([n.url for n in nodes], room, "bot", backoff=FAST) as bot:
        events = bot.events()
        assert await next_event(events) == Welcome(room, "bot", ("watcher",), "cl0")
        nodes[0].signal(how)
        gone = await next_event(events)
        # A drain closes with 1001; a killed node sends no close frame at all.
        assert isinstance(gone, Disconnected) and not gone.final
        assert gone.code == (1001 if how is signal.SIGTERM else 1006)
        back = await next_event(events)
        # It resumed its session (contract §6): the watcher saw nothing of the move.
        assert back == Welcome(room, "bot", ("watcher",), "cl1", rejoined=True, resumed=True)
        await bot.chat("back")
        assert await next_event(events) == Chat("bot", "back")
        seen = await barrier([watcher])
        assert summary(seen[watcher]) == [("new-peer", "bot"), ("chat", "back")]


async def test_stops_for_good_when_its_peer_id_connects_elsewhere(
    nodes: list[NodeProcess], watched: tuple[str, SignalingClient],
) -> None:
    room, watcher = watched
    async with ReconnectingClient([n.url for n in nodes], room, "bot", backoff=FAST) as bot:
        events = bot.events()
        assert isinstance(await next_event(events), Welcome)
        async with await SignalingClient.connect(nodes[1].url, room, "bot") as newer:
            assert await next_event(events) == Disconnected(
                4001, "replaced by a newer connection", final=True)
            with pytest.raises(StopAsyncIteration):
                await next_event(events)
            assert bot.stopped is not None and bot.connects == 1 and bot.client is None
            # The newer connection keeps the peer id: nothing came to take it back.
            seen = await barrier([watcher, newer], via=newer)
            assert summary(seen[watcher]) == [("new-peer", "bot"), ("peer-left", "bot"),
                                              ("new-peer", "bot")]
            assert summary(seen[newer]) == []


async def test_tries_the_next_url_until_one_answers(
    nodes: list[NodeProcess], watched: tuple[str, SignalingClient],
) -> None:
    room, _ = watched
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with ReconnectingClient([nowhere, nodes[1].url], room, backoff=FAST) as bot:
        welcome = await next_event(bot.events())
        assert isinstance(welcome, Welcome) and welcome.node == "cl1"
        assert bot.peer == welcome.peer  # the node's pick is kept for reconnects
        assert isinstance(bot.last_error, OSError)


async def test_a_refusal_that_cannot_pass_is_raised_not_retried(
    nodes: list[NodeProcess],
) -> None:
    async with ReconnectingClient(nodes[0].url, unique("room"), "bot", backoff=FAST,
                                  headers={"Origin": "https://evil.example"}) as bot:
        with pytest.raises(Refused) as refused:
            await next_event(bot.events())
        assert refused.value.status == 403 and bot.connects == 0


async def test_close_ends_the_events_even_while_waiting_to_reconnect(
    nodes: list[NodeProcess],
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    bot = ReconnectingClient(nowhere, unique("room"), "bot", backoff=Backoff(first=60, cap=60))
    events = bot.events()
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)  # let the first attempt start
    await bot.close()
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(5):
            await pending


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(first=1.0, cap=8.0)
    delays = [backoff.next() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 1.0
