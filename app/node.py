"""The application factory: routes, app state, and resource lifecycles.

Start-up order (cleanup_ctx runs in order, tear-down in reverse): the backend connects
first, then the service is wired to it. On shutdown every WebSocket is closed with 1001
(`on_shutdown`) and each connection's end removes its membership while the backend is
still up; what has not closed by then is cut, and only then does the backend stop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from app.backends import create_backend
from app.config.settings import Settings
from app.core.closes import CLOSE_GOING_AWAY
from app.core.ports import Backend
from app.core.service import SignalingService
from app.edge import admin, headers, page, ws
from app.edge import endpoints as http
from app.edge.admission import Gate
from app.edge.connection import Sockets
from app.edge.peer import peer_factory
from app.edge.state import GATE, METRICS, SERVICE, SETTINGS, SOCKETS
from app.obs.metrics import NodeMetrics

log = structlog.get_logger(__name__)

BackendFactory = Callable[[Settings], Backend]


def create_app(
    settings: Settings, backend_factory: BackendFactory = create_backend
) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = metrics = NodeMetrics(settings.node_id)
    app[GATE] = Gate(settings)
    headers.install(app, settings.allowed_origins)
    app.router.add_get("/health", http.health)
    app.router.add_get("/ready", http.ready)
    app.router.add_get("/metrics", http.metrics)
    admin.add_routes(app, settings.admin_token)
    # [^/]+ rather than aiohttp's default [^{}/]+: a brace in an id is then a bad id (400
    # bad-room/bad-peer), like any other character outside the id pattern.
    app.router.add_get("/ws/{room:[^/]+}", ws.websocket)
    app.router.add_get("/ws/{room:[^/]+}/{peer:[^/]+}", ws.websocket)
    app.router.add_route("*", "/ws/{tail:.*}", http.not_found_ws)
    app.router.add_route("*", "/ws", http.not_found_ws)
    page.add_routes(app)
    app.on_response_prepare.append(http.add_node_header)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        backend = backend_factory(settings)
        backend.observer = metrics
        metrics.set_backend(type(backend).__name__.removesuffix("Backend").lower())
        service = SignalingService(backend, settings.rules(), metrics,
                                   peer_factory(settings.send_queue_bytes))
        await backend.start(service)
        service.start()
        app[SERVICE] = service
        app[SOCKETS] = sockets = Sockets(service, settings.ws_heartbeat_seconds)
        sockets.start()
        log.info("node started", node=settings.node_id,
                 backend="redis" if settings.redis_url else "memory")
        yield
        await sockets.close()
        service.repair.close()
        await backend.stop(held_since=service.close())
        log.info("node stopped", node=settings.node_id)

    async def close_peers(app: web.Application) -> None:
        metrics.set_draining(True)
        await app[SERVICE].close_all(CLOSE_GOING_AWAY, "node shutting down")

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_peers)
    return app
