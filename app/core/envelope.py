"""Envelopes on a room's pub/sub channel (contract §2), encoded with msgpack.

An envelope is a msgpack array whose first two items are the format version and a kind:

    [1, "j", node, peer, conn, takeover]   peer joined (takeover: it replaced an older conn)
    [1, "l", node, peer, conn]             peer left
    [1, "r", node, to, frame, sent]        relay `frame` (client JSON bytes) to peer `to`
    [1, "c", node, frame, sent]            chat `frame` to every peer of the room
    [1, "k", node, peer, code, reason]     close `peer`'s connections (nil peer: everyone's)
    [1, "s", node, [peer, ...]]            the room's members at this point of the channel
    [1, "u", node, peer, conn]             peer resumed on `node` as `conn` (contract §6)
    [1, "h", node, peer, conn, [peer, ...]] its old node handed the backlog over: what the
                                           peer had been told was present (its `known`)

`frame` is binary: the exact bytes the receiving node writes to its clients, so it must
be UTF-8 text of a JSON object (a browser closes the whole connection, 1007, on a text
frame that is not UTF-8). `sent` is the
origin node's wall clock (Unix seconds, a float) when it published: receivers measure the
cross-node latency from it. `k` is an operator's kick (admin API): the node that holds the
connection closes it with `code`, and its normal leave path announces `peer-left`.
Anything that does not decode to one of these shapes, or is larger than the bounds below,
raises `BadEnvelope`; the node logs and counts it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from app.core.ids import ID_PATTERN

VERSION: Final = 1
MAX_FRAME: Final = 16 * 1024 * 1024
MAX_STR: Final = 256  # ids are at most 64 bytes, a close reason 123


class BadEnvelope(ValueError):
    """Bytes on a room channel that are not an envelope of this version."""


@dataclass(frozen=True, slots=True)
class Join:
    node: str
    peer: str
    conn: str
    takeover: bool


@dataclass(frozen=True, slots=True)
class Leave:
    node: str
    peer: str
    conn: str


@dataclass(frozen=True, slots=True)
class Relay:
    node: str
    to: str
    frame: bytes
    sent: float = 0.0


@dataclass(frozen=True, slots=True)
class Chat:
    node: str
    frame: bytes
    sent: float = 0.0


@dataclass(frozen=True, slots=True)
class Kick:
    node: str
    peer: str | None  # None: every peer of the room (the room is closed)
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Sync:
    node: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resume:
    """Published with the change of owner: frames before it are the old holder's to keep
    in the backlog, frames after it the new connection's."""

    node: str
    peer: str
    conn: str


@dataclass(frozen=True, slots=True)
class Handed:
    """The old holder has written the whole backlog (it is on the channel after them)."""

    node: str
    peer: str
    conn: str  # the resuming connection
    known: tuple[str, ...]


Envelope = Join | Leave | Relay | Chat | Kick | Sync | Resume | Handed


def _pack(*items: Any) -> bytes:
    return msgpack.packb((VERSION, *items), use_bin_type=True)  # type: ignore[no-any-return]


def join(node: str, peer: str, conn: str, takeover: bool) -> bytes:
    return _pack("j", node, peer, conn, takeover)


def leave(node: str, peer: str, conn: str) -> bytes:
    return _pack("l", node, peer, conn)


def relay(node: str, to: str, frame: bytes, sent: float | None = None) -> bytes:
    return _pack("r", node, to, frame, time.time() if sent is None else sent)


def chat(node: str, frame: bytes, sent: float | None = None) -> bytes:
    return _pack("c", node, frame, time.time() if sent is None else sent)


def kick(node: str, peer: str | None, code: int, reason: str) -> bytes:
    return _pack("k", node, peer, code, reason)


def sync(node: str, members: list[str]) -> bytes:
    return _pack("s", node, members)


def resume(node: str, peer: str, conn: str) -> bytes:
    return _pack("u", node, peer, conn)


def handed(node: str, peer: str, conn: str, known: list[str]) -> bytes:
    return _pack("h", node, peer, conn, known)


def sync_prefix(node: str) -> bytes:
    """The head of a sync envelope; a Lua script appends the member array it reads."""
    return b"\x94" + b"".join(msgpack.packb(x) for x in (VERSION, "s", node))


def decode(payload: bytes) -> Envelope:
    """Decode and validate one envelope; raise `BadEnvelope` for anything else."""
    try:
        # No valid envelope has a map, an extension type or a long string: refuse them
        # before msgpack allocates for them.
        items = msgpack.unpackb(payload, raw=False, use_list=True, max_bin_len=MAX_FRAME,
                                max_str_len=MAX_STR, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise BadEnvelope(f"not msgpack: {exc}") from None
    if not isinstance(items, list) or len(items) < 3 or items[0] != VERSION:
        raise BadEnvelope("not a version-1 envelope array")
    kind, node, rest = items[1], items[2], items[3:]
    _need_id(node)
    if kind == "r" and len(rest) == 3:
        return Relay(node, _need_id(rest[0]), _need_frame(rest[1]), _need_time(rest[2]))
    if kind == "c" and len(rest) == 2:
        return Chat(node, _need_frame(rest[0]), _need_time(rest[1]))
    if kind == "j" and len(rest) == 3 and isinstance(rest[2], bool):
        return Join(node, _need_id(rest[0]), _need_id(rest[1]), rest[2])
    if kind == "l" and len(rest) == 2:
        return Leave(node, _need_id(rest[0]), _need_id(rest[1]))
    if kind == "k" and len(rest) == 3:
        return _kick(node, *rest)
    if kind == "s" and len(rest) == 1 and isinstance(rest[0], list):
        return Sync(node, tuple(_need_id(m) for m in rest[0]))
    if kind == "u" and len(rest) == 2:
        return Resume(node, _need_id(rest[0]), _need_id(rest[1]))
    if kind == "h" and len(rest) == 3 and isinstance(rest[2], list):
        return Handed(node, _need_id(rest[0]), _need_id(rest[1]),
                      tuple(_need_id(m) for m in rest[2]))
    raise BadEnvelope(f"unknown kind or arity: {kind!r}/{len(rest)}")


def _need_id(value: object) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise BadEnvelope("an id field is not a valid id")
    return value


def _need_frame(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise BadEnvelope("a frame field is not binary")
    if not (value.startswith(b"{") and value.endswith(b"}")):
        raise BadEnvelope("a frame is not a JSON object")
    try:
        value.decode()
    except UnicodeDecodeError:
        raise BadEnvelope("a frame is not UTF-8") from None
    return value


def _need_time(value: object) -> float:
    if not isinstance(value, float) or not math.isfinite(value) or value < 0:
        raise BadEnvelope("a timestamp field is not a finite float")
    return value


def _kick(node: str, peer: object, code: object, reason: object) -> Kick:
    target = None if peer is None else _need_id(peer)
    if not isinstance(code, int) or isinstance(code, bool) or not 1000 <= code <= 4999:
        raise BadEnvelope("a close code is not an integer in 1000..4999")
    if not isinstance(reason, str) or len(reason.encode()) > 123:
        raise BadEnvelope("a close reason is not a string of at most 123 bytes")
    return Kick(node, target, code, reason)
