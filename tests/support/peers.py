"""Client-side helpers that make assertions exact instead of timing-based."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from app.client import Frame, SignalingClient


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
