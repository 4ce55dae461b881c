"""Waiting for state that lives in another process (Redis, a node) and sends no event.

Every poll of the suite is here: `wait_until` (sync, process start-up), `eventually`
(async condition), `retried` (an attempt refused until the other side catches up) and the
`/ready` checks (`ready_status`, `wait_ready`).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
POLL = 0.02  # seconds between two looks: cheap local checks, quick to notice


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a cheap condition (process start-up); fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(POLL)
    raise TimeoutError(f"timed out waiting for {what}")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Poll `check` until it holds: for effects that follow an event we cannot observe
    (a node finishing a leave, an XACK after an HTTP answer); fails after `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - no event to wait on across processes
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def retried(refused: type[Exception] | tuple[type[Exception], ...],
                  attempt: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
    """`attempt` again while it raises `refused`: a node releases what a closed peer held
    a little after the client's close returns, and nothing tells the client when."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await attempt()
            except refused:
                await asyncio.sleep(POLL)


def ready_status(url: str, timeout: float = 0.5) -> int | None:
    """What `GET url/ready` answers (200 ready, 503 not), None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


async def wait_ready(urls: Iterable[str], ready: bool = True, within: float = 10.0) -> None:
    """Every node's /ready says 200 (`ready`) or 503, all within `within` seconds."""
    want = 200 if ready else 503
    pending = list(urls)

    async def settled() -> bool:
        statuses = await asyncio.gather(*(asyncio.to_thread(ready_status, u) for u in pending))
        return all(s == want for s in statuses)

    await eventually(settled, within, f"/ready {want} on {', '.join(pending)}")
