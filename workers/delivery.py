"""Signed webhook POSTs with retries: one event, up to N attempts, exponential backoff.

Signature scheme (what a receiver checks; see the README for a verification snippet):

    X-Signaling-Timestamp: <unix seconds of this attempt>
    X-Signaling-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
    X-Signaling-Event-Id:  <stream id, the same on every attempt: deduplicate on it>

The timestamp is signed with the body, so a captured request cannot be replayed later
than the receiver's tolerance; each attempt is signed afresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
import structlog

log = structlog.get_logger(__name__)

SIGNATURE_HEADER: Final = "X-Signaling-Signature"
TIMESTAMP_HEADER: Final = "X-Signaling-Timestamp"
EVENT_ID_HEADER: Final = "X-Signaling-Event-Id"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for one attempt."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str,
           tolerance: float = 300.0, now: float | None = None) -> bool:
    """What a receiver does: a matching signature over a recent timestamp."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    attempts: int
    error: str  # the last failure ("" when delivered)


class Deliverer:
    def __init__(self, session: aiohttp.ClientSession, url: str, secret: str,
                 max_attempts: int, backoff: float, backoff_max: float) -> None:
        self._session = session
        self._url = url
        self._secret = secret.encode()
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._backoff_max = backoff_max

    def delay(self, attempt: int) -> float:
        """Wait after failed attempt `attempt` (1-based): base, 2x base, 4x ... up to the cap."""
        return float(min(self._backoff * 2 ** (attempt - 1), self._backoff_max))

    async def deliver(self, event: dict[str, Any],
                      before_attempt: Callable[[], Awaitable[None]] | None = None) -> Outcome:
        """POST `event` until a 2xx answer or the last attempt; never raises for HTTP trouble."""
        body = orjson.dumps(event)
        error = ""
        for attempt in range(1, self._max_attempts + 1):
            if before_attempt is not None:
                await before_attempt()
            error = await self._post(str(event["id"]), body)
            if not error:
                return Outcome(True, attempt, "")
            log.warning("webhook attempt failed", id=event["id"], attempt=attempt,
                        error=error)
            if attempt < self._max_attempts:
                await asyncio.sleep(self.delay(attempt))
        return Outcome(False, self._max_attempts, error)

    async def _post(self, event_id: str, body: bytes) -> str:
        """One attempt; returns "" on success, else what went wrong."""
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(self._secret, timestamp, body),
                   EVENT_ID_HEADER: event_id}
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                await response.read()
                return "" if 200 <= response.status < 300 else f"HTTP {response.status}"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"
