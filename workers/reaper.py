"""The reaper as a process of its own: removes the peers of nodes that died without
cleaning up (contract §3). Every node already does this itself (its supervisor sweeps,
`app/backends/rediswire/reaping.py`); this worker is an option, for a cluster that wants
the clean-up to go on while no node is up, or sooner (`REAP_INTERVAL_SECONDS`).

    python -m workers.reaper   (REDIS_URL, KEY_PREFIX, REAP_INTERVAL_SECONDS, RESUME_SECONDS)

It waits out the same resume grace as the nodes (RESUME_SECONDS, contract §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from app.backends.cluster.reaping import StepsReaper
from app.backends.rediswire.clients import AnyRedis, close_client, plain_client
from app.backends.rediswire.connect import LOST
from app.backends.rediswire.keys import Keys
from app.backends.rediswire.reaping import AtomicReaper, Reaper
from app.config.redisurl import BadRedisUrl, parse_redis_url
from app.config.settings import ConfigError, EnvReader, settings_or_exit
from app.obs.logs import configure_logging

log = structlog.get_logger("reaper")


@dataclass(frozen=True)
class ReaperSettings:
    redis_url: str
    key_prefix: str = "sig:"
    interval: float = 1.0
    events_maxlen: int = 0  # room events for webhooks, as the nodes write them
    grace: float = 15.0  # RESUME_SECONDS, as the nodes have it
    log_level: str = "info"
    log_format: str = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReaperSettings:
        r = EnvReader(os.environ if env is None else env)
        url = r.text("REDIS_URL", "")
        settings = cls(
            redis_url=url,
            key_prefix=r.text("KEY_PREFIX", "sig:"),
            interval=r.number("REAP_INTERVAL_SECONDS", 1.0, lo=0.05),
            events_maxlen=(r.integer("WEBHOOK_STREAM_MAXLEN", 100_000, lo=1)
                           if r.flag("WEBHOOK_EVENTS", False) else 0),
            grace=r.number("RESUME_SECONDS", 15.0, lo=0.0),
            log_level=r.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=r.choice("LOG_FORMAT", "json", ("json", "console")),
        )
        if not url:
            raise ConfigError("REDIS_URL is required: the reaper cleans up a Redis cluster")
        try:
            parse_redis_url(url)
        except BadRedisUrl as exc:
            raise ConfigError(str(exc)) from None
        return settings


def reaper_for(client: AnyRedis, keys: Keys, events_maxlen: int = 0,
               grace: float = 0.0) -> Reaper:
    """The reaper for the client's form: in steps on a Redis Cluster, atomic otherwise."""
    if isinstance(client, RedisCluster):
        return StepsReaper(client, keys, events_maxlen, grace)
    return AtomicReaper(client, keys, events_maxlen, grace)


async def run(settings: ReaperSettings, stop: asyncio.Event) -> None:
    client = plain_client(settings.redis_url)
    reaper = reaper_for(client, Keys(settings.key_prefix), settings.events_maxlen,
                        settings.grace)
    delay = settings.interval
    log.info("reaper started", interval=settings.interval, prefix=settings.key_prefix)
    try:
        while not stop.is_set():
            try:
                await reaper.load_scripts()
                await reaper.sweep()
                delay = settings.interval
            except (RedisError, RedisClusterException, *LOST) as exc:
                log.warning("redis unreachable; retrying", error=repr(exc))
                delay = min(max(delay * 2, 0.1), 5.0) * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        await close_client(client)
        log.info("reaper stopped")


def main() -> None:
    settings = settings_or_exit(ReaperSettings.from_env)
    configure_logging(settings.log_level, settings.log_format)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    asyncio.run(go())


if __name__ == "__main__":
    main()
