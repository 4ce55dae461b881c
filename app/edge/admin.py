"""The admin HTTP API: look at the cluster and act on it, behind `ADMIN_TOKEN`.

Reads go through the backend's `Directory` (Redis, so any node answers for the whole
cluster). Kicks travel on the room's channel (`SignalingService.kick`): the node that holds
the connection closes it, wherever it is, and its normal leave announces `peer-left`.
Without `ADMIN_TOKEN` the API does not exist (404), so it cannot be left open by accident.

    GET  /admin/rooms                               rooms and their peer counts
    GET  /admin/rooms/{room}                        a room's peers and their nodes
    GET  /admin/nodes                               nodes and their peer counts
    POST /admin/rooms/{room}/peers/{peer}/kick      close that peer's connection (4002)
    POST /admin/rooms/{room}/close                  close every connection of the room (4003)
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from app.core.closes import CLOSE_KICKED, CLOSE_ROOM_CLOSED
from app.core.ids import is_valid_id, is_valid_peer
from app.core.limits import Failures
from app.core.ports import BackendUnavailable
from app.edge.clientip import limit_key
from app.edge.endpoints import json_error
from app.edge.state import GATE, SERVICE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, token: str | None) -> None:
    """Mount the API when a token is configured; otherwise answer 404 under /admin."""
    if not token:
        app.router.add_route("*", "/admin{tail:.*}", _disabled)
        return
    guard = _guarded(token.encode())
    app.router.add_get("/admin/rooms", guard(rooms))
    app.router.add_get("/admin/rooms/{room}", guard(room))
    app.router.add_get("/admin/nodes", guard(nodes))
    app.router.add_post("/admin/rooms/{room}/peers/{peer}/kick", guard(kick))
    app.router.add_post("/admin/rooms/{room}/close", guard(close_room))


async def _disabled(request: web.Request) -> web.Response:
    return json_error(404, "not-found", "the admin API is disabled: set ADMIN_TOKEN")


def _guarded(token: bytes) -> Callable[[Handler], Handler]:
    """Bearer-token check, plus the answers every handler shares (bad ids, backend down).

    Failed tries are throttled per client address (10, then 1 a second: 429), so the
    token cannot be guessed at line speed; a client that has used up its tries is refused
    before its token is even compared."""
    failures = Failures()

    def wrap(handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            client = limit_key(request.app[GATE].client(request))
            if failures.blocked(client):
                response = json_error(429, "too-many-failures",
                                      "too many failed admin requests: wait, then retry")
                response.headers["Retry-After"] = "1"
                return response
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given:
                failures.failed(client)
                response = json_error(401, "unauthorized", "send Authorization: Bearer <token>")
                response.headers["WWW-Authenticate"] = 'Bearer realm="admin"'
                return response
            if not hmac.compare_digest(given.strip().encode(), token):
                failures.failed(client)
                return json_error(403, "forbidden", "wrong admin token")
            if not is_valid_id(request.match_info.get("room", "r")):
                return json_error(400, "bad-room", "not a room id")
            if not is_valid_peer(request.match_info.get("peer", "p")):
                return json_error(400, "bad-peer", "not a peer id")
            try:
                return await handler(request)
            except (BackendUnavailable, OSError):
                return json_error(503, "unavailable", "signaling backend unavailable")

        return checked

    return wrap


async def rooms(request: web.Request) -> web.Response:
    counts = await request.app[SERVICE].backend.directory.rooms()
    return web.json_response({"rooms": [{"room": r, "peers": n} for r, n in counts.items()]})


async def room(request: web.Request) -> web.Response:
    name = request.match_info["room"]
    peers = await request.app[SERVICE].backend.directory.room(name)
    if not peers:
        return json_error(404, "room-not-found", f"room {name!r} has no peers")
    return web.json_response({"room": name, "peers": [dataclasses.asdict(p) for p in peers]})


async def nodes(request: web.Request) -> web.Response:
    found = await request.app[SERVICE].backend.directory.nodes()
    return web.json_response({"nodes": [dataclasses.asdict(n) for n in found]})


async def kick(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name, peer = request.match_info["room"], request.match_info["peer"]
    owner = next((p for p in await service.backend.directory.room(name) if p.peer == peer), None)
    if owner is None:
        return json_error(404, "peer-not-found", f"no peer {peer!r} in room {name!r}")
    reason = await _reason(request, "kicked")
    await service.kick(name, peer, CLOSE_KICKED, reason)
    return web.json_response({"room": name, "peer": peer, "node": owner.node,
                              "code": CLOSE_KICKED, "reason": reason}, status=202)


async def close_room(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name = request.match_info["room"]
    peers = await service.backend.directory.room(name)
    if not peers:
        return json_error(404, "room-not-found", f"room {name!r} has no peers")
    reason = await _reason(request, "room closed")
    await service.kick(name, None, CLOSE_ROOM_CLOSED, reason)
    return web.json_response({"room": name, "peers": len(peers), "code": CLOSE_ROOM_CLOSED,
                              "reason": reason}, status=202)


async def _reason(request: web.Request, default: str) -> str:
    """An optional `{"reason": ...}` body (anything else is ignored), cut to what a
    WebSocket close frame holds."""
    try:
        body: Any = await request.json() if request.can_read_body else {}
    except ValueError:
        body = {}
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(reason, str) or not reason:
        return default
    return reason.encode()[:123].decode(errors="ignore")
