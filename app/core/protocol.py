"""The client wire protocol (contract §1): parsing client frames and building node frames.

Frames are strict JSON (orjson refuses NaN, Infinity, numbers beyond a double and lone
surrogates). Outgoing frames are encoded once, as UTF-8 bytes, and those bytes travel
through Redis unchanged to every receiving node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

SERVER: Final = "server"
PERM_CHAT: Final = "chat"  # the token permission that lets a peer send chat
OK: Final = "ok"  # a frame's outcome when no error code answered it (metrics label)
RELAY_TYPES: Final = frozenset({"offer", "answer", "ice"})
PONG: Final = b'{"type":"pong"}'


class ErrorCode(StrEnum):
    BAD_MESSAGE = "bad-message"
    UNKNOWN_TYPE = "unknown-type"
    PEER_NOT_FOUND = "peer-not-found"
    TOO_LARGE = "too-large"
    RATE_LIMITED = "rate-limited"
    UNAVAILABLE = "unavailable"
    FORBIDDEN = "forbidden"


class FrameError(Exception):
    """A client frame the node refuses; the connection stays open."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Inbound:
    """A parsed client frame. `from` and `room` are dropped here: the node sets them."""

    type: str
    to: str | None
    data: Any


def parse_frame(text: str, max_depth: int = 32) -> Inbound:
    """Parse one text frame into an `Inbound`, or raise `FrameError`.

    Frames nested deeper than `max_depth` (the frame object itself is depth 1) are refused:
    every receiving client would have to parse them too.
    """
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameError(ErrorCode.BAD_MESSAGE, json_problem(exc, text)) from None
    if not isinstance(obj, dict):
        raise FrameError(ErrorCode.BAD_MESSAGE, "a frame must be a JSON object")
    # Fewer brackets than the limit cannot nest deeper than it: skip the walk (C-speed count).
    if text.count("[") + text.count("{") > max_depth and depth(obj) > max_depth:
        raise FrameError(ErrorCode.BAD_MESSAGE, f"JSON nested deeper than {max_depth} levels")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FrameError(ErrorCode.BAD_MESSAGE, "'type' must be a string")
    to = obj.get("to")
    if kind in RELAY_TYPES and not isinstance(to, str):
        raise FrameError(ErrorCode.BAD_MESSAGE, f"'{kind}' needs 'to', a peer id string")
    return Inbound(kind, to if isinstance(to, str) else None, obj.get("data"))


def json_problem(exc: orjson.JSONDecodeError, text: str) -> str:
    """What was wrong with a frame that is not strict JSON, in words, and where."""
    if not text.strip():
        return "the frame is empty: send one JSON object"
    where = f"at line {exc.lineno}, column {exc.colno}"
    word = text[exc.pos:exc.pos + 9].lstrip("-")
    if word.startswith(("NaN", "Infinity")):
        return f"not valid JSON {where}: NaN and Infinity are not JSON numbers"
    reason = _PLAIN.get(exc.msg, exc.msg)
    return f"not valid JSON {where}: {reason}"


# orjson's wording where it speaks of its own internals; the rest reads plainly as it is.
_LONE = "(a lone surrogate is not a character)"
_NO_LOW = f"a \\uD800-\\uDBFF escape must be followed by a \\uDC00-\\uDFFF one {_LONE}"
_PLAIN = {
    "number is infinity when parsed as double": "the number is too large (beyond a double)",
    "no low surrogate in string": _NO_LOW,
    "invalid low surrogate in string": _NO_LOW,
    "invalid high surrogate in string": f"a \\uDC00-\\uDFFF escape must follow a "
                                        f"\\uD800-\\uDBFF one {_LONE}",
    "unexpected control character in string": "control characters (below U+0020) must be "
                                              "escaped inside strings",
}


def depth(obj: Any) -> int:
    """Nesting depth of parsed JSON: a scalar is 0, `{}` or `[]` is 1."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in item
                     if isinstance(child, dict | list))
    return deepest


def encode(obj: Any) -> bytes:
    # orjson's bytes keep the 4 KiB buffer they were written into, whatever their length;
    # a frame the node holds (a queued frame, an idle peer's last one) would cost that much.
    # An exact-size copy takes ~0.1 µs (bench/PROFILE.md).
    return bytes(memoryview(orjson.dumps(obj)))


def relay_frame(kind: str, room: str, sender: str, to: str, data: Any) -> bytes:
    return encode({"type": kind, "room": room, "from": sender, "to": to, "data": data})


def chat_frame(room: str, sender: str, data: Any) -> bytes:
    return encode({"type": "chat", "room": room, "from": sender, "data": data})


def notice_frame(kind: str, room: str, peer: str) -> bytes:
    """`new-peer` and `peer-left`: the peer id is the whole `data`, as in the original."""
    return encode({"type": kind, "room": room, "from": SERVER, "data": peer})


def welcome_frame(room: str, peer: str, peers: list[str], node: str,
                  extra: Mapping[str, Any] | None = None) -> bytes:
    """`extra` adds fields to `data` (e.g. `iceServers`); clients ignore what they don't know."""
    data: dict[str, Any] = {"peer": peer, "peers": peers, "node": node}
    data.update((k, v) for k, v in (extra or {}).items() if k not in data)
    return encode({"type": "welcome", "room": room, "from": SERVER, "to": peer, "data": data})


def error_frame(code: ErrorCode, message: str) -> bytes:
    return encode({"type": "error", "from": SERVER, "data": {"code": code, "message": message}})


def error_body(code: str, message: str) -> bytes:
    """JSON body of an HTTP refusal before the upgrade."""
    return encode({"error": {"code": code, "message": message}})
