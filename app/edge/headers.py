"""Response headers: CORS on the plain HTTP endpoints for allowed origins only, no banner.

Browsers on an allowed origin (a dashboard, the web client) may read `/health`, `/ready`
and `/metrics`; any other origin gets no CORS headers, so the browser withholds the
answer. The WebSocket endpoint does not use CORS: its `Origin` is checked at the upgrade.
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

CORS_PATHS = frozenset({"/health", "/ready", "/metrics"})
SERVER_NAME = "signaling"  # instead of aiohttp's default, which names exact versions


def install(app: web.Application, allowed_origins: Collection[str]) -> None:
    origins = frozenset(allowed_origins)

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer a CORS preflight (OPTIONS) for the HTTP endpoints from allowed origins."""
        if (request.method == hdrs.METH_OPTIONS and request.path in CORS_PATHS
                and request.headers.get(hdrs.ORIGIN) in origins
                and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers):
            return web.Response(status=204, headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, HEAD",
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: "Authorization",
                hdrs.ACCESS_CONTROL_MAX_AGE: "600",
            })
        return await handler(request)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[hdrs.SERVER] = SERVER_NAME
        if request.path not in CORS_PATHS:
            return
        response.headers[hdrs.VARY] = hdrs.ORIGIN  # the answer depends on Origin: caches
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin in origins:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin

    app.middlewares.append(preflight)
    app.on_response_prepare.append(on_prepare)
