"""The reaper: removes the peers of nodes that died without cleaning up (contract §3).

A node refreshes `sig:node:{N}` (TTL `NODE_TTL_SECONDS`) and files each membership it
owns in `sig:node:{N}:peers`. When the liveness key has expired but the index remains,
the node is gone: for each of its memberships the reaper runs the same atomic LEAVE
script a node runs for a clean leave, so every peer of the room hears `peer-left` once.
Several reapers may run side by side: the script removes and announces only while the
dead node still owns the membership, so exactly one of them wins each.

    python -m workers.reaper        (REDIS_URL, KEY_PREFIX, REAP_INTERVAL_SECONDS)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import envelope
from app.backend import scripts
from app.backend.pipe import LOST
from app.backend.redis import client_from_url
from app.config import ConfigError, EnvReader, settings_or_exit
from app.ids import is_valid_id
from app.keys import Keys
from app.logs import configure_logging

log = structlog.get_logger("reaper")


@dataclass(frozen=True)
class ReaperSettings:
    redis_url: str
    key_prefix: str = "sig:"
    interval: float = 1.0
    events_maxlen: int = 0  # room events for webhooks, as the nodes write them
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
            log_level=r.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=r.choice("LOG_FORMAT", "json", ("json", "console")),
        )
        if not url:
            raise ConfigError("REDIS_URL is required: the reaper cleans up a Redis cluster")
        return settings


class Reaper:
    def __init__(self, client: Redis, keys: Keys, events_maxlen: int = 0) -> None:
        self._client = client
        self._keys = keys
        self._events_maxlen = events_maxlen
        head, tail = keys.node_peers_parts()
        self._index = re.compile(re.escape(head) + r"(.+)" + re.escape(tail))

    async def sweep(self) -> int:
        """One pass: reap every node whose index outlived its liveness key."""
        reaped = 0
        async for raw in self._client.scan_iter(match=self._keys.node_peers("*"), count=1000):
            match = self._index.fullmatch(raw.decode())
            if match is None or not is_valid_id(node := match.group(1)):
                continue
            if not await self._client.exists(self._keys.node(node)):
                reaped += await self.reap(node)
        return reaped

    async def reap(self, node: str) -> int:
        """Remove and announce every membership `node` still owns; returns how many."""
        k = self._keys
        entries = [_text(e) for e in await self._client.smembers(k.node_peers(node))]
        pairs = [entry.partition("/")[::2] for entry in entries]
        async with self._client.pipeline(transaction=False) as pipe:
            for room, peer in pairs:
                pipe.hget(k.room_conns(room), peer)
            owners = [_text(o) for o in await pipe.execute()]
        leaves = []
        async with self._client.pipeline(transaction=False) as pipe:
            for (room, peer), owner in zip(pairs, owners, strict=True):
                conn = owner.removeprefix(f"{node}/")
                leaves.append(owner.startswith(f"{node}/") and is_valid_id(conn))
                if not leaves[-1]:
                    pipe.srem(k.node_peers(node), f"{room}/{peer}")  # no longer this node's
                    continue
                pipe.evalsha(scripts.LEAVE.sha, 5, k.room_peers(room), k.room_conns(room),
                             k.rooms, k.node_peers(node), k.events, room, peer, owner,
                             k.room_channel(room), envelope.leave(node, peer, conn), 0,
                             self._events_maxlen)
            results = await pipe.execute()
        announced = sum(1 for leave, r in zip(leaves, results, strict=True) if leave and r == 1)
        if entries:
            log.info("reaped dead node", node=node, peers=announced, entries=len(entries))
        return announced


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


async def run(settings: ReaperSettings, stop: asyncio.Event) -> None:
    client = client_from_url(settings.redis_url)
    reaper = Reaper(client, Keys(settings.key_prefix), settings.events_maxlen)
    delay = settings.interval
    log.info("reaper started", interval=settings.interval, prefix=settings.key_prefix)
    try:
        while not stop.is_set():
            try:
                await scripts.load_all(client)
                await reaper.sweep()
                delay = settings.interval
            except (RedisError, *LOST) as exc:
                log.warning("redis unreachable; retrying", error=repr(exc))
                delay = min(max(delay * 2, 0.1), 5.0) * random.uniform(0.8, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        await client.aclose()
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
