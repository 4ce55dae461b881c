"""Optional token auth: a JWT says which peer may join which room, until when, to do what.

Off unless `AUTH_SECRET` (HS256) or `AUTH_PUBLIC_KEY`/`AUTH_PUBLIC_KEY_FILE` (RS256 for an
RSA key, ES256 for a P-256 key) is set. Claims:

    sub    the peer id (required; a URL that names another peer is refused)
    room   the room id (required; exactly one room per token)
    exp    expiry, seconds since the epoch (required; the node closes the session then)
    perms  list of permissions (optional, default none): "chat" lets the peer send chat;
           offers, answers, ice and ping need no permission

Only the one algorithm that matches the configured key is accepted, so a token cannot
choose its own verification (no `none`, no HS256 signed with a public key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from app.config.keyfiles import load_public_key
from app.config.settings import Settings
from app.core.ids import is_valid_peer


class AuthError(Exception):
    """The upgrade is refused with 401; `code` goes into the JSON body."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token allows: one peer id, its permissions, until `expires`."""

    peer: str
    perms: frozenset[str]
    expires: float


class Verifier:
    def __init__(self, key: Any, algorithm: str) -> None:
        self._key = key
        self._algorithm = algorithm

    @classmethod
    def from_settings(cls, settings: Settings) -> Verifier | None:
        """None when auth is off (neither a secret nor a public key configured)."""
        if settings.auth_secret:
            return cls(settings.auth_secret, "HS256")
        if settings.auth_public_key:
            return cls(*load_public_key(settings.auth_public_key))
        return None

    def verify(self, token: str | None, room: str, peer: str | None) -> Grant:
        """Check `token` for `room` (and `peer`, when the URL names one); raise AuthError."""
        if not token:
            raise AuthError("auth-required", "a token is required: ?token= or Authorization")
        try:
            claims = jwt.decode(token, self._key, algorithms=[self._algorithm],
                                options={"require": ["exp", "sub", "room"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("token-expired", "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError("bad-token", f"invalid token: {exc}") from None
        sub, perms = claims["sub"], claims.get("perms", [])
        if not isinstance(sub, str) or not is_valid_peer(sub):
            raise AuthError("bad-token", "the token's sub is not a valid peer id")
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise AuthError("bad-token", "the token's perms must be a list of strings")
        if claims["room"] != room:
            raise AuthError("wrong-room", "the token is not for this room")
        if peer is not None and peer != sub:
            raise AuthError("wrong-peer", "the token is for another peer id")
        return Grant(sub, frozenset(perms), float(int(claims["exp"])))
