"""Plain HTTP endpoints (contract §4).

`/health` and `/ready` reveal nothing sensitive: a status word, and the answering node's
id in `X-Node-Id` (the id every client sees in `welcome` anyway); no other nodes, rooms,
peers, versions or configuration. So they stay open to load balancers and, for allowed
origins, browsers.
"""

from __future__ import annotations

from aiohttp import web

from app.edge.admission import Refusal
from app.edge.state import METRICS, SERVICE, SETTINGS
from app.obs.metrics import CONTENT_TYPE


def json_error(status: int, code: str, message: str) -> web.Response:
    """The contract's refusal shape (see `Refusal`), for refusals outside the upgrade."""
    return Refusal(status, code, message).response()


async def health(request: web.Request) -> web.Response:
    """Liveness, as in the original design: 200 while the process runs."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the backend is reachable and the node is not draining."""
    service = request.app[SERVICE]
    if service.ready:
        return web.json_response({"status": "ready"})
    status = "draining" if service.draining else "unavailable"
    return web.json_response({"status": status}, status=503)


async def not_found_ws(request: web.Request) -> web.Response:
    return json_error(400, "bad-path", "use /ws/{room} or /ws/{room}/{peer}")


async def add_node_header(request: web.Request, response: web.StreamResponse) -> None:
    """Name the answering node on every response, the WebSocket upgrade included, so a
    client (or nginx's access log) sees which node it reached without a welcome frame."""
    response.headers["X-Node-Id"] = request.app[SETTINGS].node_id
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format of this node's own registry."""
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response
