"""Mint a token for testing: `python -m app.cli.tokens --room R --peer P --ttl 1h [--perm chat]`.

Signs with `AUTH_SECRET` (HS256) from the environment or `.env` (or `ENV_FILE`), the same
place the node reads it, or with a private key file (`--key-file`, RS256 or ES256). The
token goes to stdout, so `TOKEN=$(python -m app.cli.tokens ...)` works.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from dotenv import load_dotenv

from app.config.keyfiles import MIN_SECRET_BYTES, key_algorithm
from app.core.ids import is_valid_id, is_valid_peer

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def mint(key: Any, algorithm: str, room: str, peer: str, ttl: float,
         perms: Iterable[str] = (), now: float | None = None) -> str:
    """A token for `peer` in `room`, valid for `ttl` seconds from `now`."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": peer, "room": room, "iat": issued, "exp": issued + int(ttl),
              "perms": sorted(set(perms))}
    return jwt.encode(claims, key, algorithm=algorithm)


def parse_ttl(text: str) -> int:
    """`90`, `90s`, `15m`, `1h`, `2d` -> seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if m is None or int(m[1]) == 0:
        raise argparse.ArgumentTypeError(f"bad ttl {text!r}: use e.g. 90s, 15m, 1h, 2d")
    return int(m[1]) * _UNITS[m[2]]


def signing_key(key_file: str | None) -> tuple[Any, str]:
    if key_file:
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        return key, key_algorithm(key)
    secret = os.environ.get("AUTH_SECRET", "").strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"set AUTH_SECRET (at least {MIN_SECRET_BYTES} bytes) or --key-file")
    return secret, "HS256"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m app.cli.tokens", description=__doc__.split("\n")[0])
    p.add_argument("--room", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--ttl", type=parse_ttl, default=3600, help="lifetime (default 1h)")
    p.add_argument("--perm", action="append", default=[], help="a permission, e.g. chat")
    p.add_argument("--key-file", help="PEM private key (RSA: RS256, P-256: ES256)")
    args = p.parse_args(argv)
    if not is_valid_id(args.room) or not is_valid_peer(args.peer):
        p.error("room and peer must be valid ids (and the peer not 'server')")
    load_dotenv(os.environ.get("ENV_FILE", ".env"), override=False)
    try:
        key, algorithm = signing_key(args.key_file)
    except (OSError, ValueError, TypeError) as exc:
        print(f"cannot sign: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(mint(key, algorithm, args.room, args.peer, args.ttl, args.perm))


if __name__ == "__main__":
    main()
