"""RFC 6455 as the node speaks it on the raw socket (app/edge/wsframe.py, app/edge/connection.py):
what any client library may send (fragments, control frames between them, frames sent
with the upgrade request, a client-initiated close) works, and broken framing closes
the connection with the code the RFC names."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from signaling_client.client import SignalingClient
from signaling_client.events import Frame

from app.backends.memory import MemoryBackend
from app.config.settings import Settings
from app.core.limits import RateLimit
from app.edge import wsframe
from app.edge.peer import Outbox, Peer
from app.edge.wsframe import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, FrameReader
from app.node import create_app
from tests.conftest import StartServer
from tests.support.attacker import client_frame
from tests.support.cluster import NodeFactory, node_settings


async def next_of(client: SignalingClient, kind: str) -> Frame:
    """The next frame of type `kind` (a welcome or notice may come first)."""
    while (frame := await client.recv()).type != kind:
        pass
    return frame


def chat(text: str) -> bytes:
    return json.dumps({"type": "chat", "data": text}, ensure_ascii=False).encode()


class RawClient:
    """A WebSocket client on a bare TCP stream: sends any bytes, reads server frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str, path: str, early: bytes = b"") -> RawClient:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode() + early)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        accept = wsframe.accept_key({"Upgrade": "websocket", "Connection": "Upgrade",
                                     "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": key})
        assert f"Sec-WebSocket-Accept: {accept}".encode() in head
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self) -> tuple[int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        assert not b1 & 0x80, "server frames are never masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def json(self) -> dict[str, Any]:
        opcode, payload = await self.frame()
        assert opcode == OP_TEXT, (opcode, payload)
        decoded: dict[str, Any] = json.loads(payload)
        return decoded

    async def closed_with(self) -> int:
        """Read until the server's close frame; then the server ends the TCP connection."""
        async with asyncio.timeout(5):
            while True:
                opcode, payload = await self.frame()
                if opcode == OP_CLOSE:
                    code: int = struct.unpack("!H", payload[:2])[0]
                    assert await self.reader.read() == b""
                    return code

    async def aclose(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# -- the reader alone -----------------------------------------------------------------------

def test_reader_joins_fragments_across_any_split_and_passes_control_frames_between() -> None:
    stream = (client_frame(OP_TEXT, b"he", fin=False) + client_frame(OP_PING, b"p")
              + client_frame(OP_CONT, b"ll", fin=False) + client_frame(OP_CONT, b"o")
              + client_frame(OP_TEXT, b"x" * 70000) + client_frame(OP_BINARY, b"\x00"))
    expected = [(OP_PING, b"p"), (OP_TEXT, b"hello"), (OP_TEXT, b"x" * 70000),
                (OP_BINARY, b"\x00")]
    for step in (1, 3, 7, 1000, len(stream)):
        reader = FrameReader(100000)
        got = []
        for i in range(0, len(stream), step):
            got += reader.feed(stream[i:i + step])
        assert got == expected and not reader.pending, step


payloads = st.binary(max_size=300) | st.sampled_from([b"x" * 125, b"y" * 126, b"z" * 65536])


@st.composite
def client_streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes]], list[int]]:
    """Messages, each whole or in fragments with pings/pongs between them, encoded as a
    client sends them, and where the network cuts the stream."""
    stream, expected = b"", []
    for _ in range(draw(st.integers(1, 6))):
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        parts = draw(st.lists(payloads, min_size=1, max_size=4))
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            stream += client_frame(opcode if i == 0 else OP_CONT, part, fin=last)
            if not last and draw(st.booleans()):
                control = draw(st.sampled_from([OP_PING, OP_PONG]))
                body = draw(st.binary(max_size=125))
                stream += client_frame(control, body)
                expected.append((control, body))
        expected.append((opcode, b"".join(parts)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    return stream, expected, cuts


@settings(max_examples=300, deadline=None)
@given(case=client_streams())
def test_reader_yields_the_same_messages_however_the_stream_is_cut(
        case: tuple[bytes, list[tuple[int, bytes]], list[int]]) -> None:
    stream, expected, cuts = case
    reader = FrameReader(1 << 20)
    got = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += reader.feed(stream[start:stop])
    assert got == expected and not reader.pending


def test_an_unfinished_message_is_bounded_however_it_is_fragmented() -> None:
    """Empty fragments are not free: each counts FRAME_COST against the message's limit."""
    limit = 1 << 20
    for fragment in (b"", b"1"):
        reader = FrameReader(limit)
        reader.feed(client_frame(OP_TEXT, b"[", fin=False))
        frames = client_frame(OP_CONT, fragment, fin=False) * 1000
        with pytest.raises(wsframe.ProtocolViolation) as raised:
            for _ in range(limit // wsframe.FRAME_COST // 1000 + 2):
                reader.feed(frames)
        assert raised.value.code == 1009
    whole = FrameReader(limit)  # a message of many small fragments within the limit passes
    parts = [client_frame(OP_TEXT, b"[", fin=False),
             *[client_frame(OP_CONT, b"1,", fin=False)] * 100, client_frame(OP_CONT, b"1]")]
    assert whole.feed(b"".join(parts)) == [(OP_TEXT, b"[" + b"1," * 100 + b"1]")]


@pytest.mark.parametrize(("data", "code"), [
    (client_frame(OP_TEXT, b"hi", masked=False), 1002),
    (client_frame(OP_TEXT, b"hi", rsv=0x40), 1002),
    (client_frame(0x3, b"hi"), 1002),
    (client_frame(OP_CONT, b"hi"), 1002),
    (client_frame(OP_PING, b"p", fin=False), 1002),
    (client_frame(OP_PING, b"p" * 126), 1002),
    (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
    (client_frame(OP_TEXT, b"x" * 101), 1009),
    (client_frame(OP_TEXT, b"x" * 60, fin=False) + client_frame(OP_CONT, b"x" * 60), 1009),
])
def test_reader_refuses_what_rfc_6455_forbids(data: bytes, code: int) -> None:
    with pytest.raises(wsframe.ProtocolViolation) as refused:
        FrameReader(100).feed(data)
    assert refused.value.code == code


def test_oversized_frame_is_refused_from_its_header_before_its_payload_arrives() -> None:
    head = client_frame(OP_TEXT, b"x" * 200)[:8]
    with pytest.raises(wsframe.ProtocolViolation):
        FrameReader(100).feed(head)


@pytest.mark.parametrize(("payload", "expected"), [
    (b"", (1005, "")), (struct.pack("!H", 4000) + b"bye", (4000, "bye")),
])
def test_close_payloads(payload: bytes, expected: tuple[int, str]) -> None:
    assert wsframe.parse_close(payload) == expected


@pytest.mark.parametrize("payload", [b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999),
                                     struct.pack("!H", 1000) + b"\xff"])
def test_bad_close_payloads(payload: bytes) -> None:
    with pytest.raises(wsframe.ProtocolViolation):
        wsframe.parse_close(payload)


def test_server_frames_use_the_shortest_length_form() -> None:
    for n, head in ((125, 2), (126, 4), (65535, 4), (65536, 10)):
        assert len(wsframe.text_frame(b"x" * n)) == n + head


# -- on a node ------------------------------------------------------------------------------

async def test_fragmented_chat_with_a_ping_between_its_parts_is_answered_and_delivered(
        url: str) -> None:
    bob = await SignalingClient.connect(url, "room", "bob")
    raw = await RawClient.connect(url, "/ws/room/alice")
    assert (await raw.json())["type"] == "welcome"
    text = chat("é" * 20000)  # the UTF-8 of one character split across two fragments
    cut = text.index(b"\xc3\xa9") + 1
    raw.send(client_frame(OP_TEXT, text[:cut], fin=False) + client_frame(OP_PING, b"hb")
             + client_frame(OP_CONT, text[cut:]))
    assert await raw.frame() == (OP_PONG, b"hb")
    assert (await raw.json())["data"] == "é" * 20000  # the sender's own echo
    got = await next_of(bob, "chat")
    assert got.data == "é" * 20000 and got.raw["from"] == "alice"
    await raw.aclose()
    await bob.close()


async def test_frames_sent_together_with_the_upgrade_request_are_handled(url: str) -> None:
    raw = await RawClient.connect(url, "/ws/room/alice",
                                  early=client_frame(OP_TEXT, b'{"type": "ping"}'))
    assert (await raw.json())["type"] == "welcome"
    assert await raw.json() == {"type": "pong"}
    await raw.aclose()


async def test_client_close_is_echoed_and_the_others_hear_peer_left(url: str) -> None:
    bob = await SignalingClient.connect(url, "room", "bob")
    raw = await RawClient.connect(url, "/ws/room/alice")
    await raw.json()
    raw.send(client_frame(OP_CLOSE, struct.pack("!H", 4000) + b"done"))
    assert await raw.closed_with() == 4000
    assert (await next_of(bob, "peer-left")).data == "alice"
    await raw.aclose()
    await bob.close()


@pytest.mark.parametrize(("data", "code"), [
    (client_frame(OP_TEXT, b'{"type": "ping"}', masked=False), 1002),
    (client_frame(OP_TEXT, b'{"type": "ping"}', rsv=0x20), 1002),
    (client_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),
    (client_frame(OP_TEXT, b"x" * 5000, fin=False) + client_frame(OP_CONT, b"x" * 5000), 1009),
])
async def test_broken_framing_closes_with_the_rfc_code_and_the_peer_leaves(
        make_node: NodeFactory, data: bytes, code: int) -> None:
    url = await make_node(hard_frame_bytes=8000)
    bob = await SignalingClient.connect(url, "room", "bob")
    raw = await RawClient.connect(url, "/ws/room/alice")
    await raw.json()
    raw.send(data)
    assert await raw.closed_with() == code
    assert (await next_of(bob, "peer-left")).data == "alice"
    await raw.aclose()
    await bob.close()


class GatedBackend(MemoryBackend):
    """A backend whose publishing waits while `gate` is closed, as Redis does when the
    node's write buffer to it is full."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def publish(self, room: str, envelope: bytes) -> asyncio.Future[None]:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await super().publish(room, envelope)


async def test_a_frame_whose_handling_waits_holds_back_the_clients_later_frames(
        start_server: StartServer) -> None:
    """The usual frame is handled inside data_received; one that must wait pauses
    reading, and the client's later frames follow it in order once it is through."""
    backends: list[GatedBackend] = []

    def factory(settings: Settings) -> GatedBackend:
        backends.append(GatedBackend(settings.node_id))
        return backends[-1]

    server = await start_server(create_app(node_settings(0), factory))
    url = str(server.make_url("")).rstrip("/")
    alice = await SignalingClient.connect(url, "room", "alice")
    for n in range(3):
        await alice.chat(f"m{n}")
    await alice.ping()  # needs no backend, but comes after the chats
    await asyncio.wait_for(backends[0].waiting.wait(), 5)
    with pytest.raises(TimeoutError):  # read on, the ping would be answered at once
        await alice.recv(timeout=0.2)
    backends[0].gate.set()
    got = [(await alice.recv()).raw for _ in range(4)]
    assert [g["data"] for g in got if g["type"] == "chat"] == ["m0", "m1", "m2"]
    assert {"type": "pong"} in got
    await alice.close()


async def test_aiohttp_lets_go_of_upgraded_connections(start_server: StartServer) -> None:
    """After the upgrade aiohttp keeps nothing of the connection (app/edge/ws.py `let_go`):
    its server lists no request handler for it, and the socket still works."""
    server = await start_server(create_app(node_settings(0)))
    url = str(server.make_url("")).rstrip("/")
    clients = [await SignalingClient.connect(url, "room", f"p{i}") for i in range(3)]
    assert server.runner is not None and server.runner.server is not None
    handlers = [task for task in asyncio.all_tasks()
                if getattr(task.get_coro(), "__qualname__", "") == "RequestHandler.start"]
    await asyncio.wait_for(asyncio.gather(*handlers), 5)  # each ends just after its upgrade
    assert server.runner.server.connections == []
    await clients[0].ice("p1", {"n": 1})
    assert (await next_of(clients[1], "ice")).data == {"n": 1}
    for client in clients:
        await client.close()


class Recorder(asyncio.Transport):
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.aborted:  # as uvloop does once the socket is closed
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


async def test_frames_sent_in_the_turn_of_a_close_go_out_before_the_close_frame() -> None:
    """A relay delivered just before a kick (same Redis batch) still reaches the client."""
    peer = Peer("r", "p", "c", RateLimit(0, 1, 0), 1 << 20, Outbox())
    transport = Recorder()
    peer.attach(transport)
    transport.written = b""  # the welcome
    peer.send(b'{"n":1}')
    peer.send(b'{"n":2}')
    peer.close(4002, "kicked")
    peer.send(b'{"n":3}')  # after the close: dropped
    assert transport.written == (wsframe.text_frame(b'{"n":1}') + wsframe.text_frame(b'{"n":2}')
                                 + wsframe.close_frame(4002, "kicked"))
    peer.detach()


async def test_frames_for_a_socket_closed_before_its_connection_lost_are_not_written() -> None:
    """uvloop closes a socket a moment before it reports connection_lost; a flush in
    between must neither raise nor hold up the other peers' frames."""
    outbox = Outbox()
    gone, other = (Peer("r", p, p, RateLimit(0, 1, 0), 1 << 20, outbox) for p in ("a", "b"))
    gone_socket, other_socket = Recorder(), Recorder()
    gone.attach(gone_socket)
    other.attach(other_socket)
    gone_socket.abort()
    other_socket.written = b""
    gone.send(b'{"n":1}')
    other.send(b'{"n":2}')
    await asyncio.sleep(0)  # the end of this loop turn: the outbox writes
    assert other_socket.written == wsframe.text_frame(b'{"n":2}')
