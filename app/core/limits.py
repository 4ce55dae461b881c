"""Per-peer rate limiting (contract §1: RATE_LIMIT_PER_S, RATE_LIMIT_BURST, RATE_LIMIT_STRIKES)."""

from __future__ import annotations

import time
from enum import Enum


class TokenBucket:
    """Classic token bucket; `rate` 0 disables it."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self, cost: float = 1.0, now: float | None = None) -> bool:
        """Take `cost` tokens if there are that many (a cost above the burst never passes);
        `now`, when the caller has read the clock already."""
        if self._rate <= 0:
            return True
        self._refill(time.monotonic() if now is None else now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def peek(self) -> bool:
        """Whether one token is there, without taking it."""
        if self._rate <= 0:
            return True
        self._refill(time.monotonic())
        return self._tokens >= 1.0

    def _refill(self, now: float) -> None:
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now


class Failures:
    """Failed attempts per client (admin auth): a bucket each, `burst` tries then `rate`
    per second, so a token cannot be guessed at line speed. At most `clients` are tracked;
    past that the oldest is forgotten (its next try starts a fresh bucket)."""

    __slots__ = ("_buckets", "_burst", "_clients", "_rate")

    def __init__(self, rate: float = 1.0, burst: int = 10, clients: int = 10_000) -> None:
        self._rate, self._burst, self._clients = rate, burst, clients
        self._buckets: dict[str, TokenBucket] = {}

    def blocked(self, client: str) -> bool:
        """Whether `client` has used up its tries (checked before a try is judged)."""
        bucket = self._buckets.get(client)
        return bucket is not None and not bucket.peek()

    def failed(self, client: str) -> None:
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._clients:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[client] = TokenBucket(self._rate, self._burst)
        bucket.take()


class Verdict(Enum):
    PASS = "pass"
    REFUSE = "refuse"  # answer `rate-limited`
    CLOSE = "close"  # close the connection with 1008


class RateLimit:
    """A token bucket plus strikes (RATE_LIMIT_STRIKES), so a client that ignores
    `rate-limited` is cut off instead of costing an error frame per frame forever.

    Each refused frame adds a strike and each accepted frame takes one away: a client a
    little over the rate keeps its connection, one that floods reaches `strikes` quickly.
    `strikes` 0 never closes.
    """

    __slots__ = ("_bucket", "_bytes", "_max", "_strikes")

    def __init__(self, rate: float, burst: int, strikes: int, bytes_per_s: float = 0.0,
                 bytes_burst: int = 0) -> None:
        self._bucket = TokenBucket(rate, burst)
        # Bytes too, so that frames each under MAX_FRAME_BYTES and within the frame rate
        # cannot flood the room-mates' send queues (RATE_LIMIT_BYTES_PER_S; 0 disables).
        self._bytes = TokenBucket(bytes_per_s, bytes_burst)
        self._max = strikes
        self._strikes = 0

    def check(self, size: int = 0) -> Verdict:
        """Judge one frame of `size` bytes: it takes a frame token and `size` byte tokens."""
        now = time.monotonic()
        if self._bucket.take(1.0, now) and (not size or self._bytes.take(size, now)):
            if self._strikes:
                self._strikes -= 1
            return Verdict.PASS
        self._strikes += 1
        if self._max and self._strikes >= self._max:
            return Verdict.CLOSE
        return Verdict.REFUSE
