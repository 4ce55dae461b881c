"""`python -m app` / `signaling-node`: one node configured from the environment."""

from __future__ import annotations

import asyncio
import gc
import os
import sys

from aiohttp import web
from dotenv import load_dotenv

from app.config import ConfigError, Settings
from app.logs import configure_logging
from app.server import create_app


def main() -> None:
    # .env in the working directory (or ENV_FILE); real environment variables win over it.
    load_dotenv(os.environ.get("ENV_FILE", ".env"), override=False)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_format, settings.node_id)
    loop = new_event_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    app = create_app(settings)
    tune_gc()
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=10,
        loop=loop,
    )


def tune_gc() -> None:
    """Fewer and cheaper garbage collections: with thousands of connections, each holding
    dozens of long-lived objects, CPython's default thresholds (700, 10, 10) run young
    collections every few joins and full ones that stall the loop for 75+ ms at 2,000
    connections; join latency p99 went from 29-42 to 13-19 ms (bench/PROFILE.md). Objects
    made at start-up are frozen: they are never garbage, so no collection walks them."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked for or, with `auto`, when installed: its C transports and loop
    cut the node's CPU per relayed frame (bench/PROFILE.md); `asyncio` is the fallback."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit("EVENT_LOOP=uvloop but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    main()
