"""A client that stays in its room: it reconnects when a node goes away, and stops when
its peer id is taken over. For bots and long-running tools.

    async with ReconnectingClient(["http://n1:3001", "http://n2:3001"], "r1", "bot") as bot:
        async for event in bot.events():
            match event:
                case Welcome(peers=peers, rejoined=again): ...
                case Chat(sender=sender, data=text) if sender != bot.peer:
                    await bot.chat(f"echo: {text}")

It reconnects after any close but 4001 to 4004 (1001: the node drains; 1006, no close
frame: the network or the node was lost) and after refusals that may pass (409 room full,
429, 5xx), under the same peer id, with capped exponential backoff and jitter, trying the
next URL each time (or the same one, behind a load balancer). It resumes its session
(contract §6) with the token of its last welcome: then `Welcome.resumed` is true, the
frames sent to it meanwhile follow, and the room saw nothing. Otherwise (the node's grace
ran out, resume is off) the room saw the peer leave and join again, and a `Welcome` that
is not `resumed` is a fresh start (`rejoined` says it follows a disconnect).
4001 means the same peer id connected elsewhere: the newer connection wins, and
fighting it back would bounce both for ever, so it ends; so do an operator's kick (4002),
room close (4003) and an expired token (4004: make a new client with a new token). A
refusal that cannot pass (400 bad id, 401 token, 403 origin) raises `Refused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from signaling_client.client import Closed, Refused, SendHelpers, SignalingClient
from signaling_client.events import Disconnected, Event

STOP_CODES = frozenset({4001, 4002, 4003, 4004})
RETRY_STATUSES = frozenset({408, 409, 425, 429})


def may_pass(status: int) -> bool:
    """A refusal worth retrying: the room, the node or the rate limit may change."""
    return status in RETRY_STATUSES or status >= 500


class NotConnected(Closed):
    """A send while no connection is open (between a close and the next welcome)."""


@dataclass
class Backoff:
    """Exponential delays with equal jitter: half fixed, half random, capped."""

    first: float = 0.25
    cap: float = 10.0
    attempt: int = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * 2.0 ** self.attempt)
        self.attempt += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class ReconnectingClient(SendHelpers):
    def __init__(self, urls: str | Sequence[str], room: str, peer: str | None = None, *,
                 backoff: Backoff | None = None, session: aiohttp.ClientSession | None = None,
                 **connect_options: Any) -> None:
        """`connect_options` go to `SignalingClient.connect` (headers, timeout, ...)."""
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.room = room
        self.peer = peer  # None: the first node picks one, and it is kept from then on
        self.backoff = backoff or Backoff()
        self.client: SignalingClient | None = None
        self.stopped: Disconnected | None = None  # why it ended (4001 to 4004)
        self.connects = 0
        self.last_error: BaseException | None = None  # of the latest failed attempt
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._options = connect_options
        self._next_url = 0
        self._closing = asyncio.Event()
        self._resume: str | None = None  # the newest welcome's resume token
        self._connected = asyncio.Event()

    @property
    def node(self) -> str | None:
        return self.client.node if self.client is not None else None

    async def events(self) -> AsyncIterator[Event]:
        """Every event of every connection, a `Welcome` first each time (`rejoined` after
        the first) and a `Disconnected` after each; ends after a final one or `close()`."""
        while not self._closing.is_set():
            client = await self._connect()
            if client is None:
                return
            yield dataclasses.replace(client.welcome_event, rejoined=self.connects > 1)
            async for event in client.events():
                yield event
            self.client = None
            self._connected.clear()
            if self._closing.is_set():
                return
            code = client.close_code
            if code in STOP_CODES:
                self.stopped = Disconnected(code, client.close_reason, final=True)
                yield self.stopped
                return
            delay = self.backoff.next()
            self._next_url += 1  # a node that closed on us may be going away
            yield Disconnected(code, client.close_reason, final=False, retry_in=delay)
            await self._pause(delay)

    async def _connect(self) -> SignalingClient | None:
        """Connect (with backoff) and return the client; None once closing."""
        while not self._closing.is_set():
            url = self.urls[self._next_url % len(self.urls)]
            try:
                client = await SignalingClient.connect(
                    url, self.room, self.peer, session=self._http(), resume=self._resume,
                    **self._options)
            except Refused as exc:
                if not may_pass(exc.status):
                    raise
                self.last_error = exc
            except (OSError, aiohttp.ClientError, TimeoutError, Closed) as exc:
                self.last_error = exc
            else:
                self.backoff.reset()
                self.connects += 1
                self.peer = client.peer_id
                self._resume = client.resume_token
                self.client = client
                self._connected.set()
                return client
            self._next_url += 1
            await self._pause(self.backoff.next())
        return None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        if self._own_session is None:
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if `close()` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    async def connected(self) -> None:
        """Wait until a connection is open (`events()` must be running to make one)."""
        await self._connected.wait()

    async def send(self, type: str, to: str | None = None, data: Any = None) -> None:
        """Send on the current connection; `NotConnected` between connections. A frame
        sent before the node's close frame arrived (a drain) is handled; after a lost
        connection (1006) a frame sent just before may be lost."""
        client = self.client
        if client is None:
            raise NotConnected(None, "not connected")
        try:
            await client.send(type, to, data)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise NotConnected(None, str(exc)) from exc

    async def close(self) -> None:
        self._closing.set()
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self._own_session is not None:
            await self._own_session.close()

    async def __aenter__(self) -> ReconnectingClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

