"""The demo page: a static browser client served by every node at `/`.

The page and the code ship together (one package, one image), so nginx serves nothing from
disk and any node can hand out the page. Only the files in `app/edge/static/` are served, by
name: no directory walking, no user-supplied paths reach the file system.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from app.edge.state import SETTINGS

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
# The page loads only its own files and talks only to its own origin (the WebSocket
# included: CSP3 'self' covers ws:/wss: of the same host). Media elements play
# MediaStreams, which CSP does not govern.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every load (ETag/Last-Modified make that a 304): a node upgrade reaches
    # open tabs at their next reload, never a mix of old and new modules.
    "Cache-Control": "no-cache",
}


def add_routes(app: web.Application) -> None:
    files = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in CONTENT_TYPES}

    async def index(request: web.Request) -> web.FileResponse:
        # Server-Timing is the one response header a page's script can read about its own
        # document (PerformanceNavigationTiming.serverTiming): it tells the page which node
        # served it, as X-Node-Id tells everyone else.
        node = request.app[SETTINGS].node_id
        return _file(files["index.html"], {"Server-Timing": f'node;desc="{node}"'})

    async def static(request: web.Request) -> web.FileResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return _file(path, {})

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)


def _file(path: Path, extra: dict[str, str]) -> web.FileResponse:
    headers = {**PAGE_HEADERS, "Content-Type": CONTENT_TYPES[path.suffix], **extra}
    return web.FileResponse(path, headers=headers)
