"""The load generator's view of each system: how to join, what to send, how to read.

All three systems are driven by the same lean aiohttp client, so the generator costs the
same per message whichever system it drives. Socket.IO is spoken directly (Engine.IO v4
over a WebSocket, no polling), the way socket.io-client does once connected:

    server: 0{"sid":..}     client: 40          server: 40{"sid":..}
    client: 421["join",{"room":..,"peer":..}]   server: 431[{"peer":..,"peers":[..]}]
    client: 42["signal",{"type":..,"to":..,"data":..}]   server pings "2", client answers "3"

Every system delivers the same object, `{type, room, from, [to,] data}`, so `parse` gives
`(type, from, data)` for all of them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiohttp
import orjson

Parsed = tuple[str, Any, Any]
PING: Final[Parsed] = ("ping", None, None)
OTHER: Final[Parsed] = ("other", None, None)


class Refused(Exception):
    """A join that did not end in a welcome (or an ack)."""


class Protocol:
    """Our wire protocol (contract §1)."""

    name = "ours"
    pong = ""

    def url(self, base: str, room: str, peer: str) -> str:
        return f"{base.replace('http', 'ws', 1)}/ws/{room}/{peer}"

    async def open(self, session: aiohttp.ClientSession, base: str, room: str, peer: str,
                   timeout: float = 15.0) -> tuple[aiohttp.ClientWebSocketResponse, list[str]]:
        """Connect and wait for the welcome; return the socket and the peers listed in it."""
        ws = await self.connect(session, base, room, peer)
        msg = await asyncio.wait_for(ws.receive(), timeout)
        kind, _, data = self.parse(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else OTHER
        if kind != "welcome":
            await ws.close()
            raise Refused(f"expected welcome, got {msg.type!r} {str(msg.data)[:200]}")
        return ws, list(data["peers"])

    async def connect(self, session: aiohttp.ClientSession, base: str, room: str,
                      peer: str) -> aiohttp.ClientWebSocketResponse:
        return await session.ws_connect(self.url(base, room, peer), autoping=True,
                                        heartbeat=None, max_msg_size=0)

    def relay(self, kind: str, to: str, data: Any) -> str:
        return orjson.dumps({"type": kind, "to": to, "data": data}).decode()

    def chat(self, data: Any) -> str:
        return orjson.dumps({"type": "chat", "data": data}).decode()

    def parse(self, text: str) -> Parsed:
        obj = orjson.loads(text)
        return obj["type"], obj.get("from"), obj.get("data")


class SocketIO(Protocol):
    """Socket.IO 4 (Engine.IO v4) as served by both peer systems."""

    name = "socketio"
    pong = "3"

    def url(self, base: str, room: str, peer: str) -> str:
        return f"{base.replace('http', 'ws', 1)}/socket.io/?EIO=4&transport=websocket"

    async def open(self, session: aiohttp.ClientSession, base: str, room: str, peer: str,
                   timeout: float = 15.0) -> tuple[aiohttp.ClientWebSocketResponse, list[str]]:
        ws = await self.connect(session, base, room, peer)
        try:
            async with asyncio.timeout(timeout):
                await self._expect(ws, "0")
                await ws.send_str("40")
                await self._expect(ws, "40")
                join = orjson.dumps(["join", {"room": room, "peer": peer}]).decode()
                await ws.send_str(f"421{join}")
                ack = await self._expect(ws, "431")
        except BaseException:
            await ws.close()
            raise
        return ws, list(orjson.loads(ack[3:])[0]["peers"])

    async def _expect(self, ws: aiohttp.ClientWebSocketResponse, prefix: str) -> str:
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise Refused(f"expected {prefix!r}, got {msg.type!r} {msg.data!r}")
            text: str = msg.data
            if text == "2":
                await ws.send_str("3")
            elif text.startswith(prefix):
                return text
            elif text.startswith("42"):
                continue  # an event before the join's ack (python-socketio may echo new-peer)
            else:
                raise Refused(f"expected {prefix!r}, got {text[:200]!r}")

    def relay(self, kind: str, to: str, data: Any) -> str:
        return "42" + orjson.dumps(["signal", {"type": kind, "to": to, "data": data}]).decode()

    def chat(self, data: Any) -> str:
        return "42" + orjson.dumps(["chat", data]).decode()

    def parse(self, text: str) -> Parsed:
        if text.startswith("42"):
            event, payload = orjson.loads(text[2:])[:2]
            if isinstance(payload, dict):
                return payload["type"], payload["from"], payload["data"]
            return event, "server", payload
        return PING if text == "2" else OTHER


SOCKETIO_SYSTEMS = ("sio-node", "pysio")


def protocol_for(system: str) -> Protocol:
    """The Go and ws relays speak our protocol; the socket.io systems their own."""
    return SocketIO() if system in SOCKETIO_SYSTEMS else Protocol()
