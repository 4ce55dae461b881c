"""Fuzzing with hypothesis: generated frames, URL ids and channel bytes never break a node.

Deterministic (derandomized, no example database) so that CI sees the same inputs on
every run. Each frame is answered exactly as an oracle written from contract §1 says;
frames are sent pipelined and checked per batch against a chat marker, which the room
channel delivers after everything the fuzzer sent before it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from signaling_client.client import SignalingClient
from signaling_client.events import Frame
from yarl import URL

from app.edge.state import METRICS, SERVICE
from tests.support.cluster import Cluster, ServerFactory, in_process, publish_raw, unique
from tests.support.peers import UPGRADE, barrier, close_all, connect

FRAMES_PER_BATCH = 50
BATCHES = 205  # 10,250 frames per run
MAX_FRAME = 8192
MAX_DEPTH = 32  # the node's default MAX_JSON_DEPTH
ROOM, OTHER = "fuzz-room", "fuzz-other"
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # contract §1, written out again here

# No shrinking: the node and its connections carry state from one example to the next, so
# a smaller replay is not the same test; a failure reports the batch as generated.
FUZZ = settings(
    derandomize=True, database=None, deadline=None, print_blob=False,
    phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# -- what to send -------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.text(max_size=20)
           | st.floats(allow_nan=False, allow_infinity=False))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=6)
types = st.sampled_from(["offer", "answer", "ice", "chat", "ping", "pong", "welcome", "error",
                         "new-peer", "peer-left", "OFFER", "chat ", ""])
targets = st.sampled_from(["obs", "fuzz", "ghost", "server", "a" * 65, "", "obs/x", "OBS"])
junk = {"from": targets | scalars, "room": st.sampled_from([ROOM, OTHER, "x"]) | scalars,
        "extra": scalars}
relays = st.fixed_dictionaries({"type": st.sampled_from(["offer", "answer", "ice"]),
                                "to": targets, "data": values}, optional=junk)
typed = st.fixed_dictionaries({"type": types}, optional={"to": targets | scalars,
                                                         "data": values, **junk})
shapeless = st.fixed_dictionaries({}, optional={"type": types | scalars,
                                                "to": targets | scalars, "data": values, **junk})


def dumps(obj: Any, ascii_only: bool) -> str:
    return json.dumps(obj, ensure_ascii=ascii_only)


structured = st.builds(dumps, relays | typed | shapeless, st.booleans())
wrong_top = st.builds(dumps, values, st.booleans())
nested = st.integers(1, 2 * MAX_DEPTH).flatmap(lambda n: st.sampled_from([
    '{"type":"chat","data":' + "[" * n + "]" * n + "}",
    '{"type":"ping","data":' + '{"a":' * n + "0" + "}" * n + "}",
    "[" * n + "]" * n,
]))
huge = st.builds(lambda n, ch: dumps({"type": "chat", "data": ch * n}, False),
                 st.integers(MAX_FRAME // 4 - 20, MAX_FRAME + 40), st.sampled_from("xé€😀"))
lone_surrogate = st.integers(0xD800, 0xDFFF).map(
    lambda c: '{"type":"chat","data":"\\u' + f'{c:04x}' + '"}')  # strict JSON refuses these
mutated = st.builds(lambda text, at, bit: text[:at % (len(text) + 1)] + bit
                    + text[at % (len(text) + 1):], structured, st.integers(0, 200),
                    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", ",", "}", '"',
                                     "\\", "\\x", "//", "\x00", " ", "\n", "tru", ""]))
truncated = st.builds(lambda text, at: text[:at % max(1, len(text))], structured,
                      st.integers(0, 200))
binary = st.binary(max_size=64)
any_frame = st.one_of(structured, structured, structured, structured, wrong_top, nested, huge,
                      lone_surrogate, mutated, truncated, st.text(max_size=60), binary)


# -- what the contract says the node answers ---------------------------------------------

def depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max(map(depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(depth, v), default=0)
    return 0


def canon(frame: dict[str, Any]) -> tuple[str, ...]:
    if frame.get("type") == "error":
        return ("error", frame["data"]["code"])
    return (orjson.dumps(frame, option=orjson.OPT_SORT_KEYS).decode(),)


def expect(sent: str | bytes) -> tuple[list[tuple[str, ...]], list[dict[str, Any]]]:
    """(what the fuzzer gets back, as a multiset; what the observer gets, in order)."""
    def err(code: str) -> tuple[list[tuple[str, ...]], list[dict[str, Any]]]:
        return [("error", code)], []

    if isinstance(sent, bytes):
        return err("bad-message")
    if len(sent.encode()) > MAX_FRAME:
        return err("too-large")
    try:
        obj = orjson.loads(sent)  # the strict RFC 8259 reference
    except orjson.JSONDecodeError:
        return err("bad-message")
    if not isinstance(obj, dict) or depth(obj) > MAX_DEPTH or not isinstance(obj.get("type"),
                                                                              str):
        return err("bad-message")
    kind, to, data = obj["type"], obj.get("to"), obj.get("data")
    if kind in ("offer", "answer", "ice"):
        if not isinstance(to, str):
            return err("bad-message")
        frame = {"type": kind, "room": ROOM, "from": "fuzz", "to": to, "data": data}
        if to == "obs":
            return [], [frame]
        return ([canon(frame)], []) if to == "fuzz" else err("peer-not-found")
    if kind == "chat":
        frame = {"type": "chat", "room": ROOM, "from": "fuzz", "data": data}
        return [canon(frame)], [frame]
    if kind == "ping":
        return [('{"type":"pong"}',)], []
    return err("unknown-type")


# -- the node under fuzzing ---------------------------------------------------------------

@dataclass
class Room:
    cluster: Cluster
    fuzzer: SignalingClient  # node 0, room ROOM
    observer: SignalingClient  # node 1, room ROOM
    bystander: SignalingClient  # node 0, room OTHER, with the observer's peer id
    sent: int = 0


@pytest.fixture
async def fuzz_room(start_server: ServerFactory) -> AsyncIterator[Room]:
    c = await in_process("memory", 2, start_server, None, rate_limit_per_s=0.0,
                         rate_limit_bytes_per_s=0.0,
                         max_frame_bytes=MAX_FRAME)
    room = Room(c, await connect(c.urls[0], ROOM, "fuzz"), await connect(c.urls[1], ROOM, "obs"),
                await connect(c.urls[0], OTHER, "obs"))
    await barrier([room.fuzzer, room.observer])
    yield room
    assert room.sent >= 10_000
    # the others kept working, and the bystander in the other room heard nothing at all
    await room.observer.offer("fuzz", {"still": "here"})
    assert (await room.fuzzer.recv()).data == {"still": "here"}
    assert (await barrier([room.bystander]))[room.bystander] == []
    await close_all(room.fuzzer, room.observer, room.bystander)


async def until_marker(client: SignalingClient, marker: str, at_least: int = 0) -> list[Frame]:
    """Frames up to the chat `marker`, and on until `at_least` others have arrived.

    Relays, chats and joins keep their order (one channel), but an error reported by the
    backend's future (`peer-not-found`) may come after a chat sent later: no order between
    them is promised, so the count completes the wait.
    """
    seen: list[Frame] = []
    marked = False
    while not marked or len(seen) < at_least:
        frame = await client.recv(timeout=10)
        if frame.type == "chat" and frame.data == marker:
            marked = True
        else:
            seen.append(frame)
    return seen


@settings(FUZZ, max_examples=BATCHES)
@given(batch=st.lists(any_frame, min_size=FRAMES_PER_BATCH, max_size=FRAMES_PER_BATCH))
async def test_generated_frames_get_contract_answers_and_break_nothing(
    fuzz_room: Room, batch: list[str | bytes]
) -> None:
    room = fuzz_room
    answers: Counter[tuple[str, ...]] = Counter()
    deliveries: list[dict[str, Any]] = []
    for sent in batch:
        back, delivered = expect(sent)
        answers.update(back)
        deliveries.extend(delivered)
        if isinstance(sent, bytes):
            await room.fuzzer.ws.send_bytes(sent)
        else:
            await room.fuzzer.ws.send_str(sent)
    marker = f"marker-{room.sent}"
    await room.fuzzer.chat(marker)
    got = await until_marker(room.fuzzer, marker, at_least=answers.total())
    assert all(f.raw["from"] == "server" for f in got if f.type == "error")
    assert Counter(canon(f.raw) for f in got) == answers
    assert [f.raw for f in await until_marker(room.observer, marker)] == deliveries
    hub = room.cluster.hub
    assert hub is not None
    assert set(hub.members[ROOM]) == {"fuzz", "obs"} and set(hub.members[OTHER]) == {"obs"}
    assert all(app[SERVICE].backend.ready for app in room.cluster.extra["apps"])
    room.sent += len(batch)


# -- ids in the URL -----------------------------------------------------------------------

ids = (st.from_regex(ID, fullmatch=True) | st.text(max_size=70)
       | st.sampled_from(["server", ".", "..", "a" * 64, "a" * 65, "%2F", "a b", "é", "a\x00"]))


def segment(text: str) -> str:
    return quote(text, safe="").replace(".", "%2E")


@pytest.fixture
async def node(start_server: ServerFactory) -> AsyncIterator[Cluster]:
    yield await in_process("memory", 1, start_server, None)


@settings(FUZZ, max_examples=300)
@given(room_id=ids, peer_id=ids | st.none())
async def test_random_ids_in_the_url_are_refused_or_admitted_per_contract(
    node: Cluster, room_id: str, peer_id: str | None
) -> None:
    base = node.urls[0]
    path = f"/ws/{segment(room_id)}" + ("" if peer_id is None else f"/{segment(peer_id)}")
    room_ok = ID.fullmatch(room_id) is not None
    peer_ok = peer_id is None or (ID.fullmatch(peer_id) is not None and peer_id != "server")
    if room_ok and peer_ok:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(URL(base.replace("http", "ws", 1) + path, encoded=True))
            welcome = Frame.parse((await ws.receive()).data)
            assert welcome.type == "welcome" and welcome.room == room_id
            assert peer_id is None or welcome.data["peer"] == peer_id
            await ws.close()
        return
    async with aiohttp.ClientSession() as http, http.get(URL(base + path, encoded=True),
                                                         headers=UPGRADE) as r:
        assert r.status == 400
        code = (await r.json())["error"]["code"]
    if room_id and (peer_id is None or peer_id):  # both segments present: the exact code
        assert code == ("bad-room" if not room_ok else "bad-peer")
    else:
        assert code == "bad-path"


# -- bytes on room channels ---------------------------------------------------------------

def documented_envelope(payload: bytes) -> bool:
    """True for payloads of a shape the README documents: those may legitimately act."""
    try:
        items = msgpack.unpackb(payload, raw=False)
    except Exception:
        return False
    if not isinstance(items, list) or len(items) < 3 or items[0] != 1 or not is_id(items[2]):
        return False
    kind, rest = items[1], items[3:]
    frame = [isinstance(x, bytes) for x in rest]
    ids = [is_id(x) for x in rest]
    return ((kind == "r" and len(rest) == 2 and ids[0] and frame[1])
            or (kind == "c" and frame == [True])
            or (kind == "j" and len(rest) == 3 and all(ids[:2]) and isinstance(rest[2], bool))
            or (kind == "l" and ids == [True, True]))


def is_id(x: object) -> bool:
    return isinstance(x, str) and ID.fullmatch(x) is not None


packed = st.lists(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                  | st.text(max_size=20) | st.binary(max_size=20), max_size=6).map(
    lambda items: msgpack.packb(items, use_bin_type=True))
near_miss = st.builds(lambda kind, node, rest: msgpack.packb([1, kind, node, *rest],
                                                             use_bin_type=True),
                      st.sampled_from(["r", "c", "j", "l", "x"]), st.sampled_from(["n1", "bad id"]),
                      st.lists(st.binary(max_size=8) | st.text(max_size=8), max_size=4))
channel_bytes = st.binary(max_size=200) | packed | near_miss


@pytest.fixture
async def pair(cluster: Cluster) -> AsyncIterator[tuple[Cluster, str, list[SignalingClient]]]:
    room = unique("garbage")
    clients = [await connect(cluster.urls[0], room, "a"), await connect(cluster.urls[1], room, "b")]
    await barrier(clients)
    yield cluster, room, clients
    await close_all(*clients)


def dropped(c: Cluster) -> list[int]:
    """Envelopes each node refused so far: its metrics, or for real processes its log lines."""
    if "apps" in c.extra:
        return [app[METRICS].hot.bad_envelopes for app in c.extra["apps"]]
    return [node.logs().count("dropped undecodable envelope") for node in c.extra["nodes"]]


@settings(FUZZ, max_examples=50)
@given(payloads=st.lists(channel_bytes, min_size=20, max_size=20))
@pytest.mark.parametrize("cluster", ["memory", "redis", "processes"], indirect=True)
async def test_random_bytes_on_a_room_channel_reach_no_client(
    pair: tuple[Cluster, str, list[SignalingClient]], payloads: list[bytes]
) -> None:
    c, room, clients = pair
    payloads = [p for p in payloads if not documented_envelope(p)]
    before = dropped(c)
    for payload in payloads:
        await publish_raw(c, room, payload)
    got = await barrier(clients)
    assert got[clients[0]] == [] and got[clients[1]] == []
    assert [n - b for n, b in zip(dropped(c), before, strict=True)] == [len(payloads)] * 2
    for client in clients:  # both nodes still relay
        await client.ping()
        assert (await client.recv()).type == "pong"
