"""Room, peer and node identifiers (contract §1): one pattern, checked before the upgrade."""

from __future__ import annotations

import re
import secrets

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_PEERS = frozenset({"server"})


def is_valid_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


def is_valid_peer(value: str) -> bool:
    """A valid id that is not `server` in any case (`SERVER` would read as the node)."""
    return is_valid_id(value) and value.lower() not in RESERVED_PEERS


def new_peer_id() -> str:
    """128 random bits as hex: more than the 96 the contract asks, and always a valid id."""
    return secrets.token_hex(16)


def new_conn_id() -> str:
    """Identifies one WebSocket connection cluster-wide, so a takeover can tell old from new."""
    return secrets.token_hex(8)
