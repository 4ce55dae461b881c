"""RFC 6455 framing, server side: the handshake answer, frames to send, frames to read.

The node speaks WebSocket on the raw transport (`app/edge/connection.py`) instead of through
aiohttp's `WebSocketResponse`: an idle connection then holds no reader task, queue or
HTTP request, which is most of its memory (bench/PROFILE.md §3). Only what a signaling
server needs: no extensions (compression is never negotiated), no subprotocols.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping

from app.core.closes import CLOSE_INVALID_TEXT, CLOSE_NO_STATUS, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack
_LEN2_READ = struct.Struct("!H").unpack_from
_LEN8_READ = struct.Struct("!Q").unpack_from


class ProtocolViolation(Exception):
    """The client broke RFC 6455; the connection closes with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(headers: Mapping[str, str]) -> str | None:
    """Sec-WebSocket-Accept for a valid upgrade request, None if it is not one."""
    if headers.get("Upgrade", "").lower() != "websocket":
        return None
    if "upgrade" not in headers.get("Connection", "").lower():
        return None
    if headers.get("Sec-WebSocket-Version", "") != "13":
        return None
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def switching_protocols(accept: str, extra: Mapping[str, str]) -> bytes:
    """The 101 answer that completes the handshake."""
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept}"]
    lines += [f"{name}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _LEN2(0x80 | opcode, 126, n) + payload
    return _LEN8(0x80 | opcode, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """`frame(OP_TEXT, ...)`, with the usual short frame built inline (once per delivery)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    return frame(OP_TEXT, payload)


def text_payload(data: bytes) -> bytes | None:
    """The payload of one whole frame that `frame` built, if it is a text frame."""
    if not data or data[0] != 0x80 | OP_TEXT:
        return None
    n = data[1] & 0x7F
    return data[2:] if n < 126 else data[4:] if n == 126 else data[10:]


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:123])


PING = frame(OP_PING, b"")


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR with the 4-byte key, as one big-integer operation (C speed, no loop)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little")


def _valid_close_code(code: int) -> bool:
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


# What each fragment of a message counts against `max_size` besides its payload: so an
# unfinished message of empty or 1-byte fragments is bounded too (at most max_size / 64
# frames), not only one of large fragments.
FRAME_COST = 64


class FrameReader:
    """Turns received bytes into whole messages: (opcode, payload) with fragments joined.

    `feed` returns the messages complete so far and keeps any partial frame; it raises
    `ProtocolViolation` for what RFC 6455 forbids and for messages over `max_size`.
    Memory is bounded whatever the client sends: a partial frame is never longer than
    `max_size` plus its header, and an unfinished message's fragments are joined as they
    come into one buffer of at most `max_size` bytes, each fragment also counting
    FRAME_COST, so a message cannot be spread over more than max_size / FRAME_COST frames.
    """

    __slots__ = ("_buf", "_frag_op", "_frag_size", "_frags", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf: bytes | bytearray = b""
        self._frag_op = 0
        self._frags: bytearray | None = None
        self._frag_size = 0  # what the unfinished message counts: payload + FRAME_COST each

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf: bytes | bytearray
        if self._buf:  # a partial frame waits: grow it in place (a large frame comes in parts)
            buf = self._buf = bytearray(self._buf) if isinstance(self._buf, bytes) else self._buf
            buf += data
        else:
            buf = data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = pos + 2
            if n == 126:
                if end - head < 2:
                    break
                n = _LEN2_READ(buf, head)[0]
                head += 2
            elif n == 127:
                if end - head < 8:
                    break
                n = _LEN8_READ(buf, head)[0]
                head += 8
            opcode = b0 & 0x0F
            self._check(b0, b1, opcode, n)
            stop = head + 4 + n
            if stop > end:
                break
            payload = unmask(buf[head + 4:stop], buf[head:head + 4])
            pos = stop
            message = self._assemble(b0 & 0x80, opcode, payload)
            if message is not None:
                out.append(message)
        self._buf = buf[pos:] if pos < end else b""
        return out

    @property
    def pending(self) -> bool:
        """Part of a frame is buffered (the connection is mid-message)."""
        return bool(self._buf)

    def _check(self, b0: int, b1: int, opcode: int, n: int) -> None:
        if b0 & 0x70:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        if not b1 & 0x80:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        if opcode in _CONTROL_OPS:
            if not b0 & 0x80 or n > 125:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "bad control frame")
        elif opcode not in _DATA_OPS and opcode != OP_CONT:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        elif n + self._frag_size + (FRAME_COST if opcode == OP_CONT else 0) > self.max_size:
            raise ProtocolViolation(CLOSE_TOO_BIG, f"message over {self.max_size} bytes "
                                    f"(each fragment counts {FRAME_COST} more)")

    def _assemble(self, fin: int, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode in _CONTROL_OPS:
            return opcode, payload
        if opcode == OP_CONT:
            if self._frags is None:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation without a start")
            self._frags += payload
            self._frag_size += len(payload) + FRAME_COST
            if not fin:
                return None
            message = (self._frag_op, bytes(self._frags))
            self._frags, self._frag_size = None, 0
            return message
        if self._frags is not None:
            raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        if fin:
            return opcode, payload
        self._frag_op, self._frags = opcode, bytearray(payload)
        self._frag_size = len(payload) + FRAME_COST
        return None


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a received close frame (1005 when it has none)."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) < 2:
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "close frame of one byte")
    code = struct.unpack_from("!H", payload)[0]
    if not _valid_close_code(code):
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolViolation(CLOSE_INVALID_TEXT, "close reason is not UTF-8") from None
