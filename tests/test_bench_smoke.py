"""The benchmark's fixed-rate relay scenario, small, against this project only.

It checks that the bench still runs and that its delivery check passes (every frame, in
order); it asserts nothing about speed. The second test shows the check can fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import aiohttp
import pytest

from bench import scenarios
from bench.gen import Conn, Scenario
from bench.protocols import Protocol
from bench.runner import Plan
from bench.systems import Cluster, system_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(system_spec("ours")).start()
    yield c
    c.stop()


def test_quick_relay_delivers_everything_in_order(cluster: Cluster) -> None:
    plan = replace(Plan.quick(), rate=400, rooms=10, relay_seconds=2.0, gens=1)
    figures = scenarios.relay(cluster, plan)
    assert figures["delivered"] == pytest.approx(800, rel=0.05)
    assert figures["p99_ms"] > 0 and figures["cpu_us_per_msg"] > 0


async def test_delivery_check_reports_gaps_and_reordering() -> None:
    async with aiohttp.ClientSession() as session:
        run = Scenario({"urls": [], "prefix": "x"}, Protocol(), session)
        conn = Conn(None, "r", "b")  # type: ignore[arg-type]
        for seq in (0, 1, 3, 2):
            run.sent += 1
            run.on_frame(conn, "ice", "a", {"seq": seq, "ts": 0.0})
        run.sent += 1  # one more that never arrives
        result = await run.finish()
    assert result["error_count"] == 3
    assert "got #3, expected #2" in result["errors"][0]
    assert "got #2, expected #4" in result["errors"][1]
    assert "delivered 4 of 5" in result["errors"][2]
