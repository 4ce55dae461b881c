"""Client-side helpers that make assertions exact instead of timing-based."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
from signaling_client.client import Closed, SignalingClient
from signaling_client.events import Frame

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


async def barrier(clients: Sequence[SignalingClient], via: SignalingClient | None = None,
                  timeout: float = 10.0) -> dict[SignalingClient, list[Frame]]:
    """Send a chat marker and collect, per client, every frame that arrived before it.

    A room channel is one ordered log, so anything published before the marker (joins,
    leaves, duplicates if there were any) reaches each client before the marker does.
    """
    sender = via or clients[0]
    token = f"barrier-{uuid.uuid4().hex}"
    await sender.chat(token)
    before: dict[SignalingClient, list[Frame]] = {}
    for client in clients:
        seen: list[Frame] = []
        while True:
            frame = await client.recv(timeout=timeout)
            if frame.type == "chat" and frame.data == token:
                break
            seen.append(frame)
        before[client] = seen
    return before


def summary(frames: Sequence[Frame]) -> list[tuple[str, object]]:
    return [(f.type, f.data) for f in frames]


async def refusal(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any]:
    """Status and JSON body of an upgrade request the node is expected to refuse."""
    async with http.get(url, headers={**UPGRADE, **(headers or {})}) as r:
        return r.status, await r.json()


async def connect(url: str, room: str, peer: str | None, **kw: Any) -> SignalingClient:
    return await SignalingClient.connect(url, room, peer, **kw)


async def close_all(*clients: SignalingClient) -> None:
    for client in clients:
        await client.close()


async def until_closed(client: SignalingClient, timeout: float = 5) -> tuple[list[Frame], int]:
    """Every frame up to the node's close, and the close code."""
    frames = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                frames.append(await client.recv(timeout=None))
        except Closed as closed:
            assert closed.code is not None
            return frames, closed.code


def drop(client: SignalingClient) -> None:
    """Cut the client's TCP connection: no close frame, as when a network goes away."""
    conn = client.ws._conn  # there is no public way to lose a connection
    assert conn is not None and conn.transport is not None
    conn.transport.abort()
