"""The WebSocket endpoint: checks before the upgrade, then one receive loop per client.

Everything that can refuse a client (bad ids, origin, token, draining node, backend down,
too many connections, full room or node) happens before the upgrade, so the client sees
an HTTP status with a JSON body instead of a silent close (`app/admission.py` holds the
request checks). After the upgrade this module only turns WebSocket messages into calls
on the service.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import WSMsgType, web

from app.admission import Refusal, Ticket
from app.backend import BackendUnavailable, RoomFull
from app.peer import Peer
from app.service import CLOSE_TOKEN_EXPIRED, NodeFull, SignalingService
from app.state import GATE, METRICS, SERVICE, SETTINGS

log = structlog.get_logger(__name__)


async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    gate = request.app[GATE]
    service = request.app[SERVICE]
    ws = web.WebSocketResponse(
        max_msg_size=settings.hard_frame_bytes,
        heartbeat=settings.ws_heartbeat_seconds or None,
        compress=False,
    )
    try:
        ticket = gate.admit(request)
        if not ws.can_prepare(request).ok:
            raise Refusal(400, "not-websocket", "this path needs a WebSocket upgrade")
        if service.draining:
            raise Refusal(503, "draining", "this node is shutting down; connect again")
        if not service.backend.ready:
            raise Refusal(503, "unavailable", "signaling backend unavailable, retry shortly")
        with gate.connection(ticket.client):
            peer = await join(service, ticket)
            await serve(request, ws, peer, ticket)
    except Refusal as refusal:
        request.app[METRICS].refusals.labels(refusal.code).inc()
        return gate.refused(refusal, request)
    return ws


async def join(service: SignalingService, ticket: Ticket) -> Peer:
    try:
        return await service.join(ticket.room, ticket.peer, ticket.perms)
    except RoomFull:
        raise Refusal(409, "room-full", f"room {ticket.room!r} is full") from None
    except NodeFull as exc:
        raise Refusal(503, "node-full", f"{exc}; retry, another node may take you") from None
    except BackendUnavailable:
        raise Refusal(503, "unavailable", "signaling backend unavailable, retry shortly") from None


async def serve(request: web.Request, ws: web.WebSocketResponse, peer: Peer,
                ticket: Ticket) -> None:
    service = request.app[SERVICE]
    try:
        await ws.prepare(request)
        peer.attach(ws, request.transport)
        if ticket.expires is not None:
            peer.close_later(ticket.expires - time.time(), CLOSE_TOKEN_EXPIRED, "token expired")
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await service.handle_text(peer, msg.data)
            elif msg.type is WSMsgType.BINARY:
                service.handle_binary(peer)
            elif msg.type is WSMsgType.ERROR:
                break  # aiohttp has already closed with the matching code (1007, 1009)
    finally:
        await service.leave(peer)
