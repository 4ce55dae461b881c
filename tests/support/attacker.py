"""A WebSocket client that behaves as an attacker would: raw frames, no reading unless asked.

It speaks just enough RFC 6455 to get upgraded, then writes whatever frames a test builds
(`client_frame`): fragments that never end, floods of pings or pongs, never a read. Its
receive buffer is kept small, so what the node sends it piles up on the node's side.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time

OP_CONT, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
                 masked: bool = True) -> bytes:
    """A frame as a client sends it (masked), or deliberately broken."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    stream = (key * (n // 4 + 1))[:n]  # XOR as one big integer: fast for megabytes too
    return head + key + (int.from_bytes(payload, "little") ^ int.from_bytes(
        stream, "little")).to_bytes(n, "little")


class Attacker:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, room: str, peer: str, rcvbuf: int = 4096,
                      early: bytes = b"") -> Attacker:
        """Upgrade; `early` frames go in the same write as the request, before the 101."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws/{room}/{peer} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
                     + early)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """Write; False once the node has closed the connection (or stopped taking data
        for 5 s: it never stops reading without closing, so that counts as a failure)."""
        if self.writer.is_closing():
            return False
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), 5)
        except (ConnectionError, OSError):
            return False
        return True

    async def closed_by_node(self, timeout: float) -> bytes:
        """Read (now, at last) until the node closes; returns everything it sent."""
        got = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await self.reader.read(1 << 16)
                except (ConnectionError, OSError):
                    return bytes(got)
                if not chunk:
                    return bytes(got)
                got += chunk

    def close(self) -> None:
        self.writer.transport.abort()


class Clock:
    """Seconds since creation, for deadlines of attack loops."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start
