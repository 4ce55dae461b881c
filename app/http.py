"""Plain HTTP endpoints (contract §4).

They reveal nothing sensitive: no node ids, peers, rooms or configuration, only a status
word, so they can stay open to load balancers and (for allowed origins) browsers.
"""

from __future__ import annotations

from aiohttp import web

from app.admission import Refusal
from app.state import SERVICE


def json_error(status: int, code: str, message: str) -> web.Response:
    """The contract's refusal shape (see `Refusal`), for refusals outside the upgrade."""
    return Refusal(status, code, message).response()


async def health(request: web.Request) -> web.Response:
    """Liveness, as in the original design: 200 while the process runs."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the backend is reachable and the node is not draining."""
    service = request.app[SERVICE]
    if service.backend.ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "unavailable"}, status=503)


async def not_found_ws(request: web.Request) -> web.Response:
    return json_error(400, "bad-path", "use /ws/{room} or /ws/{room}/{peer}")
