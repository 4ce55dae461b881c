"""Who may open a WebSocket: the checks made before the upgrade, each a plain HTTP refusal.

In order: ids in the path (400), the `Origin` allowlist against cross-site WebSocket
hijacking (403), the token when auth is on (401), then, for as long as the connection
lives, one slot of the client address's `MAX_CONNS_PER_IP` (429). Room capacity and the
node's room count are decided by the service at the join (409, 503).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import structlog
from aiohttp import hdrs, web

from app.config.networks import parse_networks
from app.config.settings import Settings
from app.core import protocol
from app.core.ids import is_valid_id, is_valid_peer, new_peer_id
from app.edge.auth import AuthError, Verifier
from app.edge.clientip import client_ip, is_trusted, limit_key, parse_ip

log = structlog.get_logger(__name__)

ID_RULE = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Refusal(Exception):
    """An upgrade refused with `status` and the contract's JSON body."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The contract's refusal shape: `{"error": {"code", "message"}}`, never a bare close."""
        return web.Response(status=self.status, headers=self.headers,
                            body=protocol.error_body(self.code, self.message),
                            content_type="application/json")


RESUME_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request: who it is, from where, allowed what, until when."""

    room: str
    peer: str
    client: str
    perms: frozenset[str] | None = None  # None: auth is off, everything is allowed
    expires: float | None = None
    resume: str | None = None  # `?resume=TOKEN` (contract §6), if it looks like one


class Gate:
    def __init__(self, settings: Settings) -> None:
        self._origins = frozenset(settings.allowed_origins)
        self._trusted = parse_networks(settings.trusted_proxies)
        self._verifier = Verifier.from_settings(settings)
        self._per_ip = settings.max_conns_per_ip
        self._open: Counter[str] = Counter()
        # TCP connections still in HTTP (a request not complete, or keep-alive), held
        # against their address's cap too; not those from TRUSTED_PROXIES (nginx), whose
        # clients are counted by X-Forwarded-For once they upgrade.
        self._http: dict[object, Callable[[], None]] = {}

    def admit(self, request: web.Request) -> Ticket:
        """Check ids, origin and token; raise `Refusal` or return the ticket."""
        room = request.match_info["room"]
        named = request.match_info.get("peer")
        if not is_valid_id(room):
            raise Refusal(400, "bad-room", f"room ids match {ID_RULE}")
        if named is not None and not is_valid_peer(named):
            raise Refusal(400, "bad-peer", f"peer ids match {ID_RULE} and are not 'server'")
        origins = request.headers.getall(hdrs.ORIGIN, [])
        if len(set(origins)) > 1:  # which one a browser meant is anyone's guess: refuse
            raise Refusal(403, "forbidden-origin", "the request has conflicting Origin headers")
        origin = origins[0] if origins else None
        if origin is not None and origin not in self._origins:
            raise Refusal(403, "forbidden-origin", f"origin {origin[:200]!r} is not allowed")
        client = self.client(request)
        # Only a named peer resumes; a malformed token is a wrong one: an ordinary join.
        resume = request.query.get("resume") if named is not None else None
        if resume is not None and not RESUME_TOKEN.fullmatch(resume):
            resume = None
        if self._verifier is None:
            return Ticket(room, named or new_peer_id(), client, resume=resume)
        try:
            grant = self._verifier.verify(bearer_token(request), room, named)
        except AuthError as exc:
            raise Refusal(401, exc.code, exc.message, {"WWW-Authenticate": "Bearer"}) from None
        return Ticket(room, grant.peer, client, grant.perms, grant.expires, resume)

    def client(self, request: web.Request) -> str:
        """The request's client address: X-Forwarded-For believed only from TRUSTED_PROXIES."""
        return client_ip(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, []),
                         self._trusted)

    def take(self, client: str) -> Callable[[], None]:
        """Take one of the client's connection slots (429 if none left); returns the call
        that gives it back, made once, when the connection is over."""
        key = limit_key(client)
        if self._per_ip and self._open[key] >= self._per_ip:
            raise Refusal(429, "too-many-connections",
                          f"at most {self._per_ip} connections per client address")
        self._open[key] += 1
        return partial(self._release, key)

    def http_connection_made(self, handler: object, transport: asyncio.BaseTransport) -> None:
        """A TCP connection was accepted (before any request): count it, or cut it at once
        when its address is at its cap, so half-sent requests cannot pile up unbounded."""
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        address = parse_ip(host)
        if address is None or is_trusted(address, self._trusted):
            return
        try:
            self._http[handler] = self.take(str(address))
        except Refusal:
            log.info("connection refused: too many from one address", remote=host)
            transport.close()

    def http_connection_lost(self, handler: object) -> None:
        release = self._http.pop(handler, None)
        if release is not None:
            release()

    def upgrading(self, handler: object) -> None:
        """The connection becomes a WebSocket, which takes a slot of its own (`take`)."""
        self.http_connection_lost(handler)

    def _release(self, key: str) -> None:
        self._open[key] -= 1
        if not self._open[key]:
            del self._open[key]

    def refused(self, refusal: Refusal, request: web.Request) -> web.Response:
        """Log a refusal and build its response."""
        log.debug("upgrade refused", status=refusal.status, code=refusal.code,
                  path=request.path, remote=request.remote)
        return refusal.response()


def bearer_token(request: web.Request) -> str | None:
    """`?token=` (browsers cannot set headers on a WebSocket) or `Authorization: Bearer`."""
    token = request.query.get("token")
    if token:
        return token
    scheme, _, value = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
