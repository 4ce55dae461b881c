"""The reaper: removes the peers of nodes that died without cleaning up (contract §3).

A node refreshes `sig:node:{N}` (TTL `NODE_TTL_SECONDS`) and files each membership it
owns in `sig:node:{N}:peers`. When the liveness key has expired but the index remains,
the node is gone: for each of its memberships the reaper runs the same atomic LEAVE
script a node runs for a clean leave, so every peer of the room hears `peer-left` once.
Several reapers may run side by side: the script removes and announces only while the
dead node still owns the membership, so exactly one of them wins each.

On a Redis Cluster (`redis+cluster://`) the same happens in the steps of
`app/backends/cluster/steps.py`: the room's LEAVE script on its slot, then `sig:rooms` put
right and the event appended, then the index entry dropped. An entry whose membership is
no longer the dead node's still gets `sig:rooms` put right: the node may have died half-way
through a change, and the index entry is how its unfinished work is found. SCAN runs on
every master.

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
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from app.backends.cluster import scripts as cluster_scripts
from app.backends.cluster.steps import Steps
from app.backends.rediswire import scripts
from app.backends.rediswire.clients import AnyRedis, close_client, plain_client
from app.backends.rediswire.connect import LOST
from app.backends.rediswire.keys import Keys
from app.config.redisurl import BadRedisUrl, parse_redis_url
from app.config.settings import ConfigError, EnvReader, settings_or_exit
from app.core import envelope
from app.core.ids import is_valid_id
from app.obs.logs import configure_logging

log = structlog.get_logger("reaper")

BATCH = 100  # cluster: entries of a dead node finished concurrently


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
        try:
            parse_redis_url(url)
        except BadRedisUrl as exc:
            raise ConfigError(str(exc)) from None
        return settings


class Reaper:
    def __init__(self, client: AnyRedis, keys: Keys, events_maxlen: int = 0) -> None:
        self._client = client
        self._keys = keys
        self._events_maxlen = events_maxlen
        head, tail = keys.node_peers_parts()
        self._index = re.compile(re.escape(head) + r"(.+)" + re.escape(tail))
        # On a Redis Cluster a leave is several steps on several slots (cluster_steps.py)
        self._steps = (Steps(client.execute_command, keys, events_maxlen)
                       if isinstance(client, RedisCluster) else None)

    async def load_scripts(self) -> None:
        """After a start, a restart of Redis or a failover: EVALSHA must find them."""
        if isinstance(self._client, RedisCluster):
            await cluster_scripts.load_all(self._client)
        else:
            await scripts.load_all(self._client)

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
        if self._steps is not None:
            announced = await self._reap_steps(self._steps, node, pairs, owners)
        else:
            announced = await self._reap_atomic(node, pairs, owners)
        if entries:
            log.info("reaped dead node", node=node, peers=announced, entries=len(entries))
        return announced

    async def _reap_atomic(self, node: str, pairs: list[tuple[str, str]], owners: list[str]
                           ) -> int:
        """One Redis: the LEAVE script removes, unlists, unindexes and announces at once."""
        k = self._keys
        leaves = []
        async with self._client.pipeline(transaction=False) as pipe:
            for (room, peer), owner in zip(pairs, owners, strict=True):
                conn = owner.removeprefix(f"{node}/")
                leaves.append(owner.startswith(f"{node}/") and is_valid_id(conn))
                if not leaves[-1]:
                    pipe.srem(k.node_peers(node), f"{room}/{peer}")  # no longer this node's
                    continue
                # only while the node is still dead: it may be back, re-creating this
                pipe.evalsha(scripts.LEAVE.sha, 6, k.room_peers(room), k.room_conns(room),
                             k.rooms, k.node_peers(node), k.events, k.node(node), room, peer,
                             owner, k.room_channel(room), envelope.leave(node, peer, conn), 0,
                             self._events_maxlen, 1)
            results = await pipe.execute()
        return sum(1 for leave, r in zip(leaves, results, strict=True) if leave and r == 1)

    async def _reap_steps(self, steps: Steps, node: str, pairs: list[tuple[str, str]],
                          owners: list[str]) -> int:
        """A cluster: finish each change the dead node left, a batch of entries at a time."""
        announced = 0
        work = list(zip(pairs, owners, strict=True))
        for start in range(0, len(work), BATCH):
            done = await asyncio.gather(*(
                steps.reap(node, room, peer, owner if _owned(node, owner) else "",
                           envelope.leave(node, peer, owner.removeprefix(f"{node}/")))
                for (room, peer), owner in work[start:start + BATCH]))
            announced += sum(done)
        return announced


def _owned(node: str, owner: str) -> bool:
    return owner.startswith(f"{node}/") and is_valid_id(owner.removeprefix(f"{node}/"))


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


async def run(settings: ReaperSettings, stop: asyncio.Event) -> None:
    client = plain_client(settings.redis_url)
    reaper = Reaper(client, Keys(settings.key_prefix), settings.events_maxlen)
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
