"""Tokens for tests: minted as the CLI mints them, or hand-made to be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.cli import tokens as token

SECRET = "test-secret-that-is-long-enough-for-hs256"


def mint(room: str, peer: str, ttl: float = 3600, perms: Iterable[str] = ("chat",),
         key: Any = SECRET, algorithm: str = "HS256", now_offset: float = 0.0) -> str:
    return token.mint(key, algorithm, room, peer, ttl, perms, now=time.time() + now_offset)


def hs256_with(claims: dict[str, Any], key: str = SECRET) -> str:
    """A correctly signed token with exactly `claims` (to leave some out)."""
    return jwt.encode(claims, key, algorithm="HS256")


def forged_hs256(claims: dict[str, Any], secret: bytes) -> str:
    """HS256 signed with `secret` by hand: PyJWT itself refuses to use a PEM key as one."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def key_pair(kind: str) -> tuple[Any, str]:
    """A private key and its public PEM: `RS256` (RSA 2048) or `ES256` (P-256)."""
    private: Any = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                    if kind == "RS256" else ec.generate_private_key(ec.SECP256R1()))
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, pem.decode()


def private_pem(private: Any) -> bytes:
    return bytes(private.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
