"""Backends that connect nodes: chosen by `REDIS_URL` (unset: in-memory, single node)."""

from __future__ import annotations

from app.backend.base import Backend, BackendEvents, BackendUnavailable, Rejoin, RoomFull
from app.backend.memory import MemoryBackend, MemoryHub
from app.config import Settings
from app.keys import Keys


def create_backend(settings: Settings) -> Backend:
    if not settings.redis_url:
        return MemoryBackend(settings.node_id)
    from app.backend.redis import RedisBackend, client_from_url

    return RedisBackend(
        client_from_url(settings.redis_url),
        settings.node_id,
        Keys(settings.key_prefix),
        node_ttl=settings.node_ttl_seconds,
        events_maxlen=settings.webhook_stream_maxlen if settings.webhook_events else 0,
    )


__all__ = [
    "Backend", "BackendEvents", "BackendUnavailable", "MemoryBackend", "MemoryHub", "Rejoin",
    "RoomFull", "create_backend",
]
