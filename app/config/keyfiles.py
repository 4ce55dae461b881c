"""Token keys as configured: the HS256 secret's minimum, a PEM public key and its algorithm.

Here, not in the edge's `auth`, because `Settings` checks them at start-up and the token
command (`app/cli/tokens.py`) signs with them.
"""

from __future__ import annotations

from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

MIN_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash


def load_public_key(pem: str) -> tuple[Any, str]:
    """The key and the one algorithm it verifies; ValueError for anything else."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    return key, key_algorithm(key)


def key_algorithm(key: Any) -> str:
    """RS256 for RSA keys (2048 bits or more), ES256 for P-256 keys, public or private."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError("RSA keys need at least 2048 bits")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "ES256"
    raise ValueError("use an RSA key (RS256) or a P-256 EC key (ES256)")
