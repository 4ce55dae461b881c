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

    def take(self) -> bool:
        if self._rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


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

    __slots__ = ("_bucket", "_max", "_strikes")

    def __init__(self, rate: float, burst: int, strikes: int) -> None:
        self._bucket = TokenBucket(rate, burst)
        self._max = strikes
        self._strikes = 0

    def check(self) -> Verdict:
        if self._bucket.take():
            if self._strikes:
                self._strikes -= 1
            return Verdict.PASS
        self._strikes += 1
        if self._max and self._strikes >= self._max:
            return Verdict.CLOSE
        return Verdict.REFUSE
