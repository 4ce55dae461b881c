"""The client's address, for per-client limits: X-Forwarded-For only from trusted proxies.

Anyone can write an `X-Forwarded-For` header, so it is believed only when the direct peer
is one of `TRUSTED_PROXIES`, and then only as far as the chain of trusted hops goes: each
proxy appends the address it saw, so walking the chain from the right, the first address
that is not a trusted proxy is the one no client could have forged.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address

from app.config.networks import Networks

Address = IPv4Address | IPv6Address

IPV6_CLIENT_PREFIX = 64  # one IPv6 subscriber usually holds a whole /64


def parse_ip(text: str | None) -> Address | None:
    """An address, or None; IPv4-mapped IPv6 (`::ffff:1.2.3.4`) becomes plain IPv4."""
    if not text:
        return None
    try:
        addr = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_trusted(addr: Address | None, trusted: Networks) -> bool:
    return addr is not None and any(addr in net for net in trusted)


def client_ip(peer: str | None, forwarded_for: Sequence[str], trusted: Networks) -> str:
    """The client address of a request whose TCP peer is `peer`.

    `forwarded_for` holds every `X-Forwarded-For` header value in order. When `peer` is not
    trusted, or there is no chain, the answer is `peer` itself.
    """
    direct = parse_ip(peer)
    if direct is None:
        return peer or "unknown"
    hop = direct
    if is_trusted(direct, trusted):
        chain = [item for value in forwarded_for for item in value.split(",")]
        for item in reversed(chain):
            addr = parse_ip(item)
            if addr is None:
                break  # not written by a trusted proxy: keep the last hop we could verify
            hop = addr
            if not is_trusted(addr, trusted):
                break
    return str(hop)


def limit_key(ip: str) -> str:
    """The unit a per-client limit counts: the address, or its /64 for IPv6."""
    addr = parse_ip(ip)
    if isinstance(addr, IPv6Address):
        return str(IPv6Network((addr, IPV6_CLIENT_PREFIX), strict=False))
    return ip
