"""The WebSocket endpoint: checks before the upgrade, then one receive loop per client.

Everything that can refuse a client (bad ids, origin, full room, backend down) happens
before the upgrade, so the client sees an HTTP status with a JSON body instead of a
silent close. After the upgrade this module only turns WebSocket messages into calls on
the service.
"""

from __future__ import annotations

import structlog
from aiohttp import WSMsgType, web

from app.backend import BackendUnavailable, RoomFull
from app.http import json_error
from app.ids import is_valid_id, is_valid_peer, new_peer_id
from app.state import SERVICE, SETTINGS

log = structlog.get_logger(__name__)


async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    service = request.app[SERVICE]
    room = request.match_info["room"]
    peer_id = request.match_info.get("peer") or new_peer_id()
    if not is_valid_id(room):
        return json_error(400, "bad-room", "room ids match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    if not is_valid_peer(peer_id):
        return json_error(400, "bad-peer",
                          "peer ids match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ and are not 'server'")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in settings.allowed_origins:
        return json_error(403, "forbidden-origin", f"origin {origin!r} is not allowed")
    ws = web.WebSocketResponse(
        max_msg_size=settings.hard_frame_bytes,
        heartbeat=settings.ws_heartbeat_seconds or None,
        compress=False,
    )
    if not ws.can_prepare(request).ok:
        return json_error(400, "not-websocket", "this path needs a WebSocket upgrade")
    if service.draining:
        return json_error(503, "draining", "this node is shutting down; connect again")
    if not service.backend.ready:
        return json_error(503, "unavailable", "signaling backend unavailable, retry shortly")
    try:
        peer = await service.join(room, peer_id)
    except RoomFull:
        return json_error(409, "room-full", f"room {room!r} is full")
    except BackendUnavailable:
        return json_error(503, "unavailable", "signaling backend unavailable, retry shortly")
    try:
        await ws.prepare(request)
        peer.attach(ws, request.transport)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await service.handle_text(peer, msg.data)
            elif msg.type is WSMsgType.BINARY:
                service.handle_binary(peer)
            elif msg.type is WSMsgType.ERROR:
                break  # aiohttp has already closed with the matching code (1007, 1009)
    finally:
        await service.leave(peer)
    return ws
