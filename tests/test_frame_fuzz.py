"""Framing fuzzer: random frame sequences never leave a connection open and unread.

Each sequence (deterministic: seeded) goes to a real node process on a fresh connection:
valid and invalid text, broken headers (reserved bits, unknown opcodes, unmasked, long
control frames), fragments that start, continue or never end, pings, pongs, close frames,
frames of 64 KB-1 MB and of 1-2 MB, written without reading (one sequence in four in the
same write as the upgrade request, before the node's 101). Then the client reads. Whatever the node
decided, it must say so promptly: either the connection is closed within 3 s, or it still
answers a ping with a pong within 3 s. A connection that is neither closed nor read is the
stall this looks for.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from tests.support.attacker import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Attacker,
    client_frame,
)
from tests.support.procs import NodeProcess, RedisServer

pytestmark = pytest.mark.integration

SEQUENCES = 400
SEED = 18


def frame_for(rng: random.Random) -> bytes:
    kind = rng.choice(["text", "text", "json", "badutf8", "rsv", "opcode", "unmasked",
                       "longping", "start", "cont", "end", "ping", "pong", "large", "big", "close",
                       "badclose"])
    if kind == "text":
        return client_frame(OP_TEXT, rng.randbytes(rng.randrange(0, 64)).hex().encode())
    if kind == "json":
        return client_frame(OP_TEXT, b'{"type":"chat","data":"hi"}')
    if kind == "badutf8":
        return client_frame(OP_TEXT, b"\xff\xfe" + rng.randbytes(rng.randrange(0, 8)))
    if kind == "rsv":
        return client_frame(OP_TEXT, b"x", rsv=0x40)
    if kind == "opcode":
        return client_frame(rng.choice([0x3, 0x7, 0xB, 0xF]), b"x")
    if kind == "unmasked":
        return client_frame(OP_TEXT, b"x", masked=False)
    if kind == "longping":
        return client_frame(OP_PING, b"p" * 126)
    if kind == "start":
        return client_frame(OP_TEXT, b"[", fin=False)
    if kind == "cont":
        return client_frame(OP_CONT, b"1," * rng.randrange(0, 4), fin=False)
    if kind == "end":
        return client_frame(OP_CONT, b"1]")
    if kind == "ping":
        return client_frame(OP_PING, rng.randbytes(rng.randrange(0, 125)))
    if kind == "pong":
        return client_frame(OP_PONG, b"")
    if kind == "large":  # over MAX_FRAME_BYTES, under HARD_FRAME_BYTES: refused, read on
        return client_frame(OP_TEXT, b"x" * rng.randrange(65_000, 1_040_000))
    if kind == "big":
        return client_frame(OP_TEXT, b"x" * rng.randrange(1_000_000, 2_000_000))
    if kind == "close":
        return client_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
    return client_frame(OP_CLOSE, b"\x00")  # badclose: a one-byte close payload


def sequences() -> Iterator[list[bytes]]:
    rng = random.Random(SEED)
    for _ in range(SEQUENCES):
        yield [frame_for(rng) for _ in range(rng.randrange(1, 8))]


@pytest.fixture(scope="module")
def node(redis_server: RedisServer) -> Iterator[NodeProcess]:
    n = NodeProcess({"LOG_LEVEL": "warning", "MAX_CONNS_PER_IP": "0", "REDIS_URL": redis_server.url,
                     "KEY_PREFIX": "ffuzz:"}).start()
    yield n
    n.close()


async def outcome(port: int, frames: list[bytes], early: bool) -> str:
    """`early`: the frames go with the upgrade request, before the node's 101."""
    attacker = await Attacker.connect(port, "fuzz", "f", rcvbuf=1 << 16,
                                      early=b"".join(frames) if early else b"")
    try:
        for frame in [] if early else frames:
            if not await attacker.send(frame):  # False: closed (a stall would raise)
                break
        # Now read, and ask whether the connection is alive: a pong, or the end.
        await attacker.send(client_frame(OP_PING, b"alive?"))
        buf = bytearray()
        async with asyncio.timeout(3):
            while True:
                try:
                    chunk = await attacker.reader.read(1 << 16)
                except (ConnectionError, OSError):
                    return "closed"
                if not chunk:
                    return "closed"
                buf += chunk
                if b"\x8a\x06alive?" in buf:
                    return "alive"
    finally:
        attacker.close()


async def test_no_frame_sequence_stalls_a_connection(node: NodeProcess) -> None:
    seen: dict[str, int] = {}
    for i, frames in enumerate(sequences()):
        try:
            result = await outcome(node.port, frames, early=i % 4 == 0)
        except TimeoutError:
            pytest.fail(f"sequence {i} left the connection open and unread: "
                        f"{[f[:2].hex() + f'..{len(f)}B' for f in frames]}")
        seen[result] = seen.get(result, 0) + 1
    print(f"{SEQUENCES} sequences: {seen}")
    assert seen.get("alive") and seen.get("closed")  # both kinds of outcome were exercised
    assert node.is_ready()
