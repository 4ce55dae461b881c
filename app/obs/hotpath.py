"""Per-frame and per-envelope counters as plain integers, exported when scraped.

prometheus-client's own metric children take a lock on every increment: about 1 µs per
counter and 4 µs per histogram observation, which a node relaying tens of thousands of
envelopes a second notices. The node is one event loop and is scraped from that same
loop, so these are plain dict entries and list slots, turned into metric families only in
`collect`. Label values come from fixed sets (frame types, error codes, envelope kinds).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from app.core.protocol import OK, ErrorCode

FRAME_TYPES: Final = ("offer", "answer", "ice", "chat", "ping", "other", "invalid", "binary")
"""`invalid`: refused before its type counted (too large, rate-limited, malformed);
`other`: a well-formed frame of an unknown type."""
ENVELOPE_KINDS: Final = ("j", "l", "r", "c", "k")
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0)
_LATENCY_KEYS: Final = tuple((k, p) for k in ("relay", "chat") for p in ("local", "remote"))


class HotPath:
    """A prometheus-client collector (it has `collect`) over plain counters."""

    def __init__(self) -> None:
        # the usual series exist from the start (so rates begin at 0); others on first use
        self.frames: Counter[tuple[str, str]] = Counter({(t, OK): 0 for t in FRAME_TYPES[:5]})
        self.errors: Counter[str] = Counter({str(code): 0 for code in ErrorCode})
        self.envelopes: Counter[str] = Counter({kind: 0 for kind in ENVELOPE_KINDS})
        self.bad_envelopes = 0
        self._buckets = {key: [0] * (len(LATENCY_BUCKETS) + 1) for key in _LATENCY_KEYS}
        self._sums = dict.fromkeys(_LATENCY_KEYS, 0.0)

    def observe(self, key: tuple[str, str], seconds: float) -> None:
        """One latency observation; `key` is (relay|chat, local|remote)."""
        self._buckets[key][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sums[key] += seconds

    def collect(self) -> Iterator[Metric]:
        frames = CounterMetricFamily("signaling_frames", "Client frames by type and outcome "
                                     "(ok or the error code sent).", labels=["type", "outcome"])
        for (kind, outcome), n in sorted(self.frames.items()):
            frames.add_metric([kind, outcome], n)
        errors = CounterMetricFamily("signaling_errors", "Error frames sent to clients, by "
                                     "code.", labels=["code"])
        for code, n in sorted(self.errors.items()):
            errors.add_metric([code], n)
        envelopes = CounterMetricFamily("signaling_envelopes_received", "Room envelopes "
                                        "received, by kind.", labels=["kind"])
        for kind, n in sorted(self.envelopes.items()):
            envelopes.add_metric([kind], n)
        bad = CounterMetricFamily("signaling_envelopes_bad", "Envelopes that did not decode "
                                  "(logged, dropped).", value=self.bad_envelopes)
        yield from (frames, errors, envelopes, bad, self._latency())

    def _latency(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "signaling_relay_latency_seconds", "Time from the origin node's publish to delivery "
            "on this node (wall clocks: skew counts).", labels=["kind", "path"])
        bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
        for key, counts in self._buckets.items():
            total, cumulative = 0, []
            for bound, n in zip(bounds, counts, strict=True):
                total += n
                cumulative.append((bound, float(total)))
            family.add_metric(list(key), cumulative, self._sums[key])
        return family
