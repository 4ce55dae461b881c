"""ICE servers for clients: STUN URLs, and TURN URLs with short-lived REST API credentials.

The credentials follow the TURN REST API scheme that coturn checks with
`use-auth-secret` / `static-auth-secret`: the username is `<expiry unix time>:<peer id>`
and the password is base64(HMAC-SHA1(secret, username)). coturn recomputes the HMAC and
refuses an expired username, so the node never stores credentials and never talks to the
TURN server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any


def turn_credential(secret: str, username: str) -> str:
    """coturn's password for `username`: base64 of HMAC-SHA1 keyed with the shared secret."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True, slots=True)
class IceServers:
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    ttl_seconds: int = 86400

    def for_peer(self, peer: str, now: float | None = None) -> list[dict[str, Any]]:
        """`RTCIceServer` dictionaries for one peer, as `new RTCPeerConnection` takes them."""
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.turn_urls and self.turn_secret:
            expiry = int(time.time() if now is None else now) + self.ttl_seconds
            username = f"{expiry}:{peer}"
            servers.append({"urls": list(self.turn_urls), "username": username,
                            "credential": turn_credential(self.turn_secret, username)})
        return servers

    def welcome_data(self, peer: str) -> dict[str, Any]:
        """Extra `welcome.data` fields: `iceServers` when any is configured, else nothing."""
        servers = self.for_peer(peer)
        return {"iceServers": servers} if servers else {}
