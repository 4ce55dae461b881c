"""Waiting for state that lives in another process (Redis, a node) and sends no event."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Poll `check` until it holds: for effects that follow an event we cannot observe
    (a node finishing a leave, an XACK after an HTTP answer); fails after `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - no event to wait on across processes
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
