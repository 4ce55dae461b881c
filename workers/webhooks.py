"""`python -m workers.webhooks`: deliver room events from the Redis stream to WEBHOOK_URL.

Nodes append events (room-started, peer-joined, peer-left, room-finished) to `sig:events`
inside the same Lua scripts that change membership, when `WEBHOOK_EVENTS=1`. This worker
reads them in the consumer group `webhooks`, at least once:

- an event is acknowledged (XACK) only after a 2xx answer, or after it was parked in
  `sig:events:parked` (with the attempts and the last error) when every attempt failed;
- on start it first re-reads its own unacknowledged events (a restart under the same
  consumer name), and every `WEBHOOK_CLAIM_IDLE_SECONDS` it takes over events that another
  consumer left unacknowledged that long (XAUTOCLAIM: a worker that died);
- so a crash at any point loses nothing; an event may arrive twice (the receiver
  deduplicates on its `id`).

Events are delivered one at a time, in stream order: a receiver that fails holds up the
events behind it rather than getting them out of order. Several workers (distinct
`WEBHOOK_CONSUMER` names) share the stream. A worker takes one new event at a time and
touches it (XCLAIM to itself) before every attempt, so a live worker's slow event is never
mistaken for an abandoned one (`WEBHOOK_CLAIM_IDLE_SECONDS` exceeds one retry's wait).

On a Redis Cluster the stream is one key on one master, so the worker runs unchanged; the
nodes append each event just after its change there, not inside it (at most once if a
node dies in between: see `app/backends/cluster/steps.py`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any, Final

import aiohttp
import structlog
from dotenv import load_dotenv
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from app.backends.rediswire.clients import AnyRedis, close_client, plain_client
from app.backends.rediswire.keys import Keys
from app.config.settings import ConfigError, Settings
from app.obs.logs import configure_logging
from workers.delivery import Deliverer

log = structlog.get_logger(__name__)

GROUP: Final = "webhooks"
BATCH: Final = 10  # pending or abandoned events handled per read
Entry = tuple[bytes, dict[bytes, bytes] | None]


def event_body(entry_id: str, fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The JSON a receiver gets: the stream fields, the id, and the time the id encodes."""
    event: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    event["id"] = entry_id
    event["time"] = int(entry_id.split("-")[0]) / 1000
    return event


class WebhookWorker:
    def __init__(self, client: AnyRedis, keys: Keys, deliverer: Deliverer, consumer: str,
                 claim_idle: float, maxlen: int) -> None:
        self._client = client
        self._keys = keys
        self._deliverer = deliverer
        self._consumer = consumer
        self._claim_idle_ms = int(claim_idle * 1000)
        self._maxlen = maxlen
        self._next_claim = 0.0

    async def run(self) -> None:
        """Deliver forever; Redis trouble is logged and retried, never fatal."""
        while True:
            try:
                await self._ensure_group()
                await self._own_pending()
                while True:
                    await self._claim_abandoned()
                    await self._read_new()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("redis unavailable, retrying", error=str(exc))
                await asyncio.sleep(1.0)

    async def _ensure_group(self) -> None:
        """Create the group at the stream's start, so events before the first run count."""
        try:
            await self._client.xgroup_create(self._keys.events, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _own_pending(self) -> None:
        """Events this consumer read before a restart but never acknowledged."""
        start = "0"
        while True:
            entries = await self._read(start, block=None)
            if not entries:
                return
            await self._handle_all(entries)
            start = entries[-1][0].decode()

    async def _claim_abandoned(self) -> None:
        if time.monotonic() < self._next_claim:
            return
        self._next_claim = time.monotonic() + self._claim_idle_ms / 2000
        start = "0-0"
        while True:
            reply = await self._client.xautoclaim(self._keys.events, GROUP, self._consumer,
                                                  self._claim_idle_ms, start, count=BATCH)
            start, entries = reply[0], reply[1]
            if entries:
                log.info("claimed abandoned events", count=len(entries))
                await self._handle_all(entries)
            if start in (b"0-0", "0-0"):
                return

    async def _read_new(self) -> None:
        await self._handle_all(await self._read(">", block=1000, count=1))

    async def _read(self, start: str, block: int | None, count: int = BATCH) -> list[Entry]:
        # RESP2 reply: [[stream, [(id, fields or None), ...]]], or None after BLOCK ms
        reply: Any = await self._client.xreadgroup(
            GROUP, self._consumer, {self._keys.events: start}, count=count, block=block)
        return list(reply[0][1]) if reply else []

    async def _handle_all(self, entries: list[Entry]) -> None:
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if fields:  # None or empty: trimmed away before delivery; nothing to send
                await self._handle(entry_id, fields)
            await self._client.xack(self._keys.events, GROUP, entry_id)

    async def _handle(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        event = event_body(entry_id, fields)

        async def touch() -> None:  # reset its idle time: this consumer is still on it
            await self._client.xclaim(self._keys.events, GROUP, self._consumer, 0, [entry_id],
                                      justid=True)

        outcome = await self._deliverer.deliver(event, touch)
        if outcome.delivered:
            log.info("event delivered", id=entry_id, type=event.get("type"),
                     attempts=outcome.attempts)
            return
        parked = {**fields, b"id": entry_id.encode(), b"attempts": str(outcome.attempts),
                  b"error": outcome.error}
        await self._client.xadd(self._keys.events_parked, parked,  # type: ignore[arg-type]
                                maxlen=self._maxlen, approximate=True)
        log.error("event parked after its last attempt", id=entry_id, error=outcome.error,
                  attempts=outcome.attempts)


async def serve(settings: Settings) -> None:
    assert settings.redis_url and settings.webhook_url and settings.webhook_secret
    client = plain_client(settings.redis_url)
    timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        deliverer = Deliverer(session, settings.webhook_url, settings.webhook_secret,
                              settings.webhook_max_attempts, settings.webhook_backoff_seconds,
                              settings.webhook_backoff_max_seconds)
        consumer = settings.webhook_consumer or socket.gethostname()
        worker = WebhookWorker(client, Keys(settings.key_prefix), deliverer, consumer,
                               settings.webhook_claim_idle_seconds,
                               settings.webhook_stream_maxlen)
        log.info("webhook worker started", consumer=consumer, url=settings.webhook_url)
        try:
            await worker.run()
        finally:
            await close_client(client)


async def _main(settings: Settings) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await serve(settings)
    except asyncio.CancelledError:
        log.info("webhook worker stopped")


def main() -> None:
    load_dotenv(os.environ.get("ENV_FILE", ".env"), override=False)
    try:
        settings = Settings.from_env()
        if not (settings.redis_url and settings.webhook_url and settings.webhook_secret):
            raise ConfigError("the webhook worker needs REDIS_URL, WEBHOOK_URL and "
                              "WEBHOOK_SECRET")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
