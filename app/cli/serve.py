"""`python -m app` / `signaling-node`: one node configured from the environment.

Phases, as in uvicorn: start (backend, then listener), serve until a signal, drain, stop.
SIGTERM drains for DRAIN_SECONDS (readiness and new upgrades answer 503 at once, so load
balancers move traffic away); SIGINT drains without waiting; a second signal of either
kind ends the wait at once.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from app.config.settings import Settings, settings_or_exit
from app.edge.admission import Gate
from app.edge.state import GATE, SERVICE
from app.node import create_app
from app.obs.logs import configure_logging

log = structlog.get_logger(__name__)


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    # keepalive_timeout bounds a connection that has not completed a request: aiohttp closes
    # one idle that long from its start, half a request included (REQUEST_TIMEOUT_S).
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5,
                           keepalive_timeout=settings.request_timeout_s)
    await runner.setup()
    assert runner.server is not None  # made by setup()
    count_http_connections(runner.server, app[GATE])
    tune_gc()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        log.info("listening", url=f"http://{settings.host}:{settings.port}")
        stop, now = asyncio.Event(), asyncio.Event()
        wait = {"s": settings.drain_seconds}

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                now.set()
                return
            if sig is signal.SIGINT:
                wait["s"] = 0.0
            stop.set()
            log.info("signal received, draining", signal=sig.name)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await stop.wait()
        await app[SERVICE].drain(wait["s"], now)
    finally:
        await runner.cleanup()


def main() -> None:
    settings = settings_or_exit(Settings.from_env)
    configure_logging(settings.log_level, settings.log_format, settings.node_id)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    except OSError as exc:  # port in use, Redis unreachable at start...
        log.error("node could not start", error=str(exc))
        raise SystemExit(1) from None


def count_http_connections(server: web.Server, gate: Gate) -> None:
    """Hold every accepted connection against its address's MAX_CONNS_PER_IP from the
    moment it is accepted, not only once it upgrades (aiohttp tells its `Server` of each
    handler's start and end)."""
    made, lost = server.connection_made, server.connection_lost

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        made(handler, transport)
        gate.http_connection_made(handler, transport)

    def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
        lost(handler, exc)
        gate.http_connection_lost(handler)

    server.connection_made = connection_made  # type: ignore[method-assign]
    server.connection_lost = connection_lost  # type: ignore[method-assign]


def tune_gc() -> None:
    """Fewer and cheaper garbage collections: with thousands of connections, each holding
    dozens of long-lived objects, CPython's default thresholds (700, 10, 10) run young
    collections every few joins and full ones that stall the loop for 75+ ms at 2,000
    connections (bench/PROFILE.md). Objects made at start-up are frozen: they are never
    garbage, so no collection walks them."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when asked for or, with `auto`, when installed: its C transports and loop
    cut the node's CPU per relayed frame (bench/PROFILE.md); `asyncio` is the fallback."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit("EVENT_LOOP=uvloop but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


if __name__ == "__main__":
    main()
