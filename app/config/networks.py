"""IP networks in settings (TRUSTED_PROXIES), checked at start-up and used by the edge."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_network

Networks = tuple[IPv4Network | IPv6Network, ...]


def parse_networks(items: Iterable[str]) -> Networks:
    """`["10.0.0.0/8", "127.0.0.1"]` -> networks; raises ValueError naming a bad item."""
    nets = []
    for item in items:
        try:
            nets.append(ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(nets)
