"""The WebSocket endpoint: checks before the upgrade, then the socket changes hands.

Everything that can refuse a client (bad ids, origin, token, draining node, backend down,
too many connections, full room or node) happens before the upgrade, so the client sees
an HTTP status with a JSON body instead of a silent close (`app/edge/admission.py` holds the
request checks). After the upgrade the socket belongs to a `Connection`
(`app/edge/connection.py`), which turns WebSocket frames into calls on the service.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from aiohttp import hdrs, web

from app.core.closes import CLOSE_TOKEN_EXPIRED
from app.core.ports import BackendUnavailable, RoomFull
from app.core.service import NodeFull, SignalingService
from app.edge import wsframe
from app.edge.admission import Refusal, Ticket
from app.edge.connection import Connection
from app.edge.peer import Peer, as_peer
from app.edge.state import GATE, METRICS, SERVICE, SETTINGS, SOCKETS

log = structlog.get_logger(__name__)


async def websocket(request: web.Request) -> web.StreamResponse:
    gate = request.app[GATE]
    service = request.app[SERVICE]
    try:
        ticket = gate.admit(request)
        accept = wsframe.accept_key(request.headers) if request.method == hdrs.METH_GET else None
        if accept is None:
            raise Refusal(400, "not-websocket", "this path needs a WebSocket upgrade")
        if service.draining:
            raise Refusal(503, "draining", "this node is shutting down; connect again")
        if not service.backend.ready:
            raise Refusal(503, "unavailable", "signaling backend unavailable, retry shortly")
        gate.upgrading(request.protocol)
        release = gate.take(ticket.client)
        try:
            peer = await join(service, ticket)
        except BaseException:
            release()
            raise
    except Refusal as refusal:
        request.app[METRICS].refusals.labels(refusal.code).inc()
        return gate.refused(refusal, request)
    return upgrade(request, peer, ticket, accept, release)


async def join(service: SignalingService, ticket: Ticket) -> Peer:
    try:
        if ticket.resume is not None:
            resumed = await service.resume(ticket.room, ticket.peer, ticket.resume, ticket.perms)
            if resumed is not None:
                return as_peer(resumed)
        return as_peer(await service.join(ticket.room, ticket.peer, ticket.perms))
    except RoomFull:
        raise Refusal(409, "room-full", f"room {ticket.room!r} is full") from None
    except NodeFull as exc:
        raise Refusal(503, "node-full", f"{exc}; retry, another node may take you") from None
    except BackendUnavailable:
        raise Refusal(503, "unavailable", "signaling backend unavailable, retry shortly") from None


def upgrade(request: web.Request, peer: Peer, ticket: Ticket, accept: str,
            release: Callable[[], None]) -> web.StreamResponse:
    """Answer 101 and hand the socket to a `Connection`; aiohttp forgets it.

    From here the connection's end (close, error, lost TCP) makes the peer leave.
    """
    app = request.app
    sockets = app[SOCKETS]
    conn = Connection(peer, app[SERVICE], sockets, app[SETTINGS].hard_frame_bytes, release)
    transport = request.transport
    if transport is None or transport.is_closing():  # the client left during the join
        sockets.ended(conn, None)
        return Detached()
    transport.write(wsframe.switching_protocols(accept, {"X-Node-Id": app[SETTINGS].node_id}))
    conn.take_over(transport, let_go(request.protocol))
    if ticket.expires is not None:
        peer.close_later(ticket.expires - time.time(), CLOSE_TOKEN_EXPIRED, "token expired")
    return Detached()


def let_go(handler: web.RequestHandler) -> bytes:
    """Make aiohttp's request handler forget its transport without closing it, as if the
    client had gone; returns the bytes it had read past the request (early frames)."""
    early: bytes = getattr(handler, "_message_tail", b"")
    handler.transport = None  # so that its connection_lost does not close the socket
    handler.connection_lost(None)
    return early


class Detached(web.StreamResponse):
    """What the handler returns once the socket is the `Connection`'s: aiohttp writes
    nothing and, its transport gone, ends the request."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
