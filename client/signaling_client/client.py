"""An asyncio client for the signaling protocol, for bots, tests and benchmarks.

    async with await SignalingClient.connect("http://localhost:3001", "room1") as c:
        print(c.peer_id, c.peers, c.node)
        await c.chat("hello")
        frame = await c.recv()

`recv` returns frames in arrival order; `next_of` waits for one type and skips others.
When the node closes the connection, `recv` raises `Closed` with the close code.
`events()` gives the same frames as typed events (`signaling_client.events`) until the connection
closes; `signaling_client.reconnect.ReconnectingClient` adds reconnection for long-running bots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from signaling_client.events import Event, Frame, Welcome, to_event


class Closed(Exception):
    """The WebSocket closed; `code` is the close code the node sent (None if none)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}) {reason}".strip())
        self.code = code
        self.reason = reason


class Refused(Exception):
    """The node refused the upgrade with an HTTP status."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"upgrade refused with HTTP {status} {message}".strip())
        self.status = status


class SendHelpers:
    """One method per frame type a client sends, on top of `send`."""

    async def send(self, type: str, to: str | None = None, data: Any = None) -> None:
        raise NotImplementedError

    async def offer(self, to: str, sdp: Any) -> None:
        await self.send("offer", to, sdp)

    async def answer(self, to: str, sdp: Any) -> None:
        await self.send("answer", to, sdp)

    async def ice(self, to: str, candidate: Any) -> None:
        await self.send("ice", to, candidate)

    async def chat(self, data: Any) -> None:
        await self.send("chat", None, data)

    async def ping(self) -> None:
        await self.send("ping")


class SignalingClient(SendHelpers):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse,
                 session: aiohttp.ClientSession | None, welcome: Frame) -> None:
        self.ws = ws
        self._own_session = session
        self.welcome = welcome
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def connect(
        cls,
        base_url: str,
        room: str,
        peer: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        resume: str | None = None,
    ) -> SignalingClient:
        """Open `/ws/{room}[/{peer}]` (with `?token=` when given) and wait for `welcome`.

        `resume`: the token of the last welcome (`resume_token`), to go on with that
        session; `resumed` says whether the node could (if not, it is a fresh join)."""
        own = session is None
        http = aiohttp.ClientSession() if session is None else session
        path = f"/ws/{room}" if peer is None else f"/ws/{room}/{peer}"
        url = base_url.rstrip("/").replace("http", "ws", 1) + path
        params = {k: v for k, v in (("token", token), ("resume", resume)) if v is not None}
        try:
            ws = await http.ws_connect(
                url, headers=headers, params=params, heartbeat=None, autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout))
            msg = await asyncio.wait_for(ws.receive(), timeout)
        except aiohttp.WSServerHandshakeError as exc:
            if own:
                await http.close()
            raise Refused(exc.status, exc.message) from None
        except BaseException:
            if own:
                await http.close()
            raise
        if msg.type is not aiohttp.WSMsgType.TEXT:
            if own:
                await http.close()
            raise Closed(ws.close_code, "no welcome")
        return cls(ws, http if own else None, Frame.parse(msg.data))

    @property
    def peer_id(self) -> str:
        return str(self.welcome.data["peer"])

    @property
    def peers(self) -> list[str]:
        return list(self.welcome.data["peers"])

    @property
    def node(self) -> str:
        return str(self.welcome.data["node"])

    @property
    def resume_token(self) -> str | None:
        """What `connect(resume=...)` takes to go on with this session (None: resume off)."""
        token = self.welcome.data.get("resume")
        return token if isinstance(token, str) else None

    @property
    def resumed(self) -> bool:
        return self.welcome.data.get("resumed") is True

    async def send(self, type: str, to: str | None = None, data: Any = None) -> None:
        frame: dict[str, Any] = {"type": type, "data": data}
        if to is not None:
            frame["to"] = to
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self, timeout: float | None = 10.0) -> Frame:
        """The next frame; raises `Closed` when the node closed the connection."""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type is aiohttp.WSMsgType.TEXT:
            return Frame.parse(msg.data)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            # The code in the node's close frame, as a browser reports it; aiohttp's own
            # `close_code` turns into 1006 if the node drops TCP before our reply.
            self.close_code = int(msg.data)
            raise Closed(self.close_code, str(msg.extra or ""))
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.ERROR):
            self.close_code = self.close_code or self.ws.close_code
            raise Closed(self.close_code, str(msg.extra or ""))
        raise Closed(None, f"unexpected {msg.type!r}")

    async def next_of(self, type: str, timeout: float = 10.0) -> Frame:
        """Wait for the next frame of `type`, discarding frames of other types."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=None)
                if frame.type == type:
                    return frame

    @property
    def welcome_event(self) -> Welcome:
        event = to_event(self.welcome)
        assert isinstance(event, Welcome), self.welcome.raw
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Typed events, in arrival order, until the node closes the connection (then
        `close_code` says why). The welcome was consumed by `connect`: see `welcome_event`."""
        while True:
            try:
                frame = await self.recv(timeout=None)
            except Closed as exc:
                self.close_reason = exc.reason
                return
            yield to_event(frame)

    async def close(self) -> None:
        await self.ws.close()
        if self._own_session is not None:
            await self._own_session.close()

    async def __aenter__(self) -> SignalingClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
