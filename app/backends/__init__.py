"""Backends that connect nodes: chosen by `REDIS_URL` (unset: in-memory, single node)."""

from __future__ import annotations

from app.backends.memory import MemoryBackend, MemoryHub
from app.backends.rediswire.keys import Keys
from app.config.settings import Settings
from app.core.ports import Backend, BackendEvents, BackendUnavailable, Rejoin, RoomFull


def create_backend(settings: Settings) -> Backend:
    """Memory without REDIS_URL; a Redis Cluster for `redis+cluster://`; else one Redis
    (`redis://`, `rediss://`, `unix://`) or Sentinel's master (`redis+sentinel://`)."""
    if not settings.redis_url:
        return MemoryBackend(settings.node_id)
    from app.backends.cluster.backend import ClusterBackend
    from app.backends.rediswire.clients import client_from_url, cluster_client
    from app.backends.single import RedisBackend
    from app.config.redisurl import parse_redis_url

    keys, events_maxlen = Keys(settings.key_prefix), (
        settings.webhook_stream_maxlen if settings.webhook_events else 0)
    target = parse_redis_url(settings.redis_url)
    if target.kind == "cluster":
        return ClusterBackend(cluster_client(target), target, settings.node_id, keys,
                              node_ttl=settings.node_ttl_seconds, events_maxlen=events_maxlen,
                              grace=settings.resume_seconds)
    return RedisBackend(client_from_url(settings.redis_url), settings.node_id, keys,
                        node_ttl=settings.node_ttl_seconds, events_maxlen=events_maxlen,
                        grace=settings.resume_seconds)


__all__ = [
    "Backend", "BackendEvents", "BackendUnavailable", "MemoryBackend", "MemoryHub", "Rejoin",
    "RoomFull", "create_backend",
]
