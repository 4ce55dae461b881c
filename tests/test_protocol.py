"""Contract §1 and §4 on one node (the embedded in-memory default), through real sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from signaling_client.client import Closed, Refused, SignalingClient

from app.core.limits import RateLimit
from app.edge import wsframe
from app.edge.peer import Outbox, Peer
from app.edge.ws import Detached, let_go
from tests.support.cluster import NodeFactory
from tests.support.peers import barrier, refusal


async def test_health_and_ready(url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{url}/health") as r:
        assert r.status == 200 and await r.json() == {"status": "ok"}
    async with http.get(f"{url}/ready") as r:
        assert r.status == 200


@pytest.mark.parametrize(("path", "code"), [
    ("/ws/bad%20room/alice", "bad-room"),
    ("/ws/" + "r" * 65 + "/alice", "bad-room"),
    ("/ws/-room/alice", "bad-room"),
    ("/ws/room/server", "bad-peer"),
    ("/ws/room/al%2Fice", "bad-peer"),
    ("/ws/room/_alice", "bad-peer"),
    ("/ws/room/alice/extra", "bad-path"),
    ("/ws/", "bad-path"),
    ("/ws", "bad-path"),
])
async def test_bad_paths_and_ids_get_400_json_before_upgrade(
    url: str, http: aiohttp.ClientSession, path: str, code: str
) -> None:
    status, body = await refusal(http, url + path)
    assert status == 400
    assert body["error"]["code"] == code and body["error"]["message"]


async def test_plain_get_without_upgrade_is_400_json(url: str, http: aiohttp.ClientSession
                                                     ) -> None:
    async with http.get(f"{url}/ws/room/alice") as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "not-websocket"


async def test_foreign_origin_is_403_and_allowed_or_absent_origin_connects(
    url: str, http: aiohttp.ClientSession
) -> None:
    status, body = await refusal(http, f"{url}/ws/room/alice", {"Origin": "https://evil.example"})
    assert status == 403 and body["error"]["code"] == "forbidden-origin"
    ok = await SignalingClient.connect(url, "room", "alice",
                                       headers={"Origin": "http://localhost:3000"})
    await ok.close()
    ok = await SignalingClient.connect(url, "room", "bob")  # no Origin: not a browser
    await ok.close()
    with pytest.raises(Refused) as refused:
        await SignalingClient.connect(url, "room", "eve", headers={"Origin": "null"})
    assert refused.value.status == 403


@pytest.mark.parametrize(("text", "code"), [
    ("not json", "bad-message"),
    ('{"type": "chat", "data": NaN}', "bad-message"),
    ('{"type": "chat", "data": Infinity}', "bad-message"),
    ('{"type": "chat", "data": 1e400}', "bad-message"),
    ('{"type": "chat", "data": "\\ud800"}', "bad-message"),
    ("[1, 2]", "bad-message"),
    ('"chat"', "bad-message"),
    ('{"type": 7}', "bad-message"),
    ('{"data": 1}', "bad-message"),
    ('{"type": "offer", "data": {}}', "bad-message"),
    ('{"type": "ice", "to": 42, "data": {}}', "bad-message"),
    ('{"type": "answer", "to": null}', "bad-message"),
    ('{"type": "dance"}', "unknown-type"),
    ('{"type": "welcome", "data": {}}', "unknown-type"),
    ('{"type": "offer", "to": "nobody", "data": {}}', "peer-not-found"),
    ('{"type": "offer", "to": "server", "data": {}}', "peer-not-found"),
    ("[" * 5000 + "]" * 5000, "bad-message"),
])
async def test_bad_frames_get_an_error_and_the_connection_stays_usable(
    url: str, text: str, code: str
) -> None:
    a = await SignalingClient.connect(url, "room", "alice")
    await a.send_raw(text)
    err = await a.recv()
    assert err.raw["type"] == "error" and err.raw["from"] == "server"
    assert err.data["code"] == code and isinstance(err.data["message"], str)
    await a.ping()
    assert (await a.recv()).raw == {"type": "pong"}
    await a.close()


async def test_binary_frame_is_bad_message(url: str) -> None:
    a = await SignalingClient.connect(url, "room", "alice")
    await a.ws.send_bytes(b'{"type": "ping"}')
    assert (await a.recv()).data["code"] == "bad-message"
    await a.ping()
    assert (await a.recv()).type == "pong"
    await a.close()


async def test_text_frame_that_is_not_utf8_closes_with_1007(url: str) -> None:
    a = await SignalingClient.connect(url, "room", "alice")
    await a.ws.send_frame(b'{"type": "chat", "data": "\xff\xfe"}', WSMsgType.TEXT)
    with pytest.raises(Closed) as closed:
        await a.recv()
    assert closed.value.code == 1007
    await a.close()


async def test_oversized_frames_too_large_then_hard_limit_closes_1009(
    make_node: NodeFactory
) -> None:
    url = await make_node(max_frame_bytes=1000, hard_frame_bytes=4000)
    a = await SignalingClient.connect(url, "room", "alice")
    await a.chat("x" * 990)  # the whole frame is over 1000 bytes
    assert (await a.recv()).data["code"] == "too-large"
    await a.chat("é" * 400)  # 800 bytes of UTF-8 text in 400 characters: under the limit
    assert (await a.recv()).type == "chat"
    await a.chat("x" * 5000)
    with pytest.raises(Closed) as closed:
        await a.recv()
    assert closed.value.code == 1009
    await a.close()


async def test_rate_limit_answers_rate_limited(make_node: NodeFactory) -> None:
    url = await make_node(rate_limit_per_s=0.001, rate_limit_burst=3)
    a = await SignalingClient.connect(url, "room", "alice")
    for _ in range(4):
        await a.ping()
    got = [await a.recv() for _ in range(4)]
    assert [f.type for f in got] == ["pong", "pong", "pong", "error"]
    assert got[3].data["code"] == "rate-limited"
    await a.close()


async def test_ping_pong_and_spoofed_fields_are_overwritten(url: str) -> None:
    a = await SignalingClient.connect(url, "room", "alice")
    b = await SignalingClient.connect(url, "room", "bob")
    await barrier([a, b])
    await a.send_raw(json.dumps({"type": "ice", "to": "bob", "from": "bob", "room": "other",
                                 "data": {"n": 1}, "extra": "dropped"}))
    assert (await b.recv()).raw == {"type": "ice", "room": "room", "from": "alice", "to": "bob",
                                    "data": {"n": 1}}
    await a.send_raw('{"type": "chat"}')  # no data: relayed as null
    assert (await b.recv()).raw == {"type": "chat", "room": "room", "from": "alice",
                                    "data": None}
    await a.close()
    await b.close()


async def test_queued_frames_of_every_length_class_arrive_intact_and_in_order(
        start_server: Any) -> None:
    """A writer that finds several frames queued sends them in one write (app/edge/peer.py);
    lengths around the 126 and 65536 boundaries of the WebSocket header must survive it."""
    lengths = [30, 125, 126, 127, 65535, 65536, 70000, 30, 125, 126]
    frames = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (n - 16)) for i, n in enumerate(lengths)]
    assert [len(f) for f in frames] == lengths

    async def handler(request: web.Request) -> web.StreamResponse:
        peer = Peer("r", "p", "c", RateLimit(0, 1, 0), 1 << 24, Outbox())
        peer.welcome = b'{"type":"welcome"}'
        for frame in frames:  # all queued before the socket is attached
            peer.send(frame)
        accept = wsframe.accept_key(request.headers)
        assert accept is not None and request.transport is not None
        transport = request.transport
        transport.write(wsframe.switching_protocols(accept, {}))
        let_go(request.protocol)
        transport.set_protocol(asyncio.Protocol())
        peer.attach(transport)
        return Detached()

    app = web.Application()
    app.router.add_get("/", handler)
    server = await start_server(app)
    async with aiohttp.ClientSession() as http, http.ws_connect(server.make_url("/")) as ws:
        got = [(await ws.receive(timeout=5)).data for _ in range(len(frames) + 1)]
    assert got == ['{"type":"welcome"}', *[f.decode() for f in frames]]


async def test_a_client_that_stops_reading_is_dropped_and_announced(
        make_node: NodeFactory) -> None:
    """Contract §3: past SEND_QUEUE_BYTES of unsent frames the peer is closed and the
    others hear peer-left, even though its socket never drains."""
    url = await make_node(send_queue_bytes=65536, rate_limit_per_s=0, rate_limit_bytes_per_s=0,
                          max_frame_bytes=65536)
    async with aiohttp.ClientSession() as http:
        slow = await http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws/room/slow")
        fast = await SignalingClient.connect(url, "room", "fast")
        assert fast.peers == ["slow"]
        payload = "x" * 60000
        async with asyncio.timeout(10):
            left = False
            while not left:  # the kernel's buffers take a few MB before the node queues
                await fast.chat(payload)
                while not left:
                    frame = await fast.recv()
                    left = frame.type == "peer-left" and frame.data == "slow"
                    if frame.type == "chat":
                        break  # our own echo: send the next one
            while (await slow.receive()).type not in (WSMsgType.CLOSE, WSMsgType.CLOSED,
                                                      WSMsgType.ERROR):
                pass
        await slow.close()
        await fast.close()
