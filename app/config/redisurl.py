"""`REDIS_URL` forms: one Redis, a Redis Cluster, or a master found through Sentinel.

    redis://[[user]:password@]host[:port][/db]      one Redis (also rediss://, unix://)
    redis+cluster://[[user]:password@]host:port[,host:port...]
                                                    a Redis Cluster: any reachable nodes
                                                    (seeds); the rest is discovered
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]
                                                    the master that these Sentinels name
                                                    `service`; the password is the master's,
                                                    `?sentinel_password=...` the Sentinels'

`rediss+cluster://` and `rediss+sentinel://` connect with TLS. Parsing is kept apart from
the clients so that settings can reject a bad URL at start-up without importing redis-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote

Kind = Literal["single", "cluster", "sentinel"]

SINGLE_SCHEMES = ("redis://", "rediss://", "unix://")
DEFAULT_PORT = {"cluster": 6379, "sentinel": 26379}


class BadRedisUrl(ValueError):
    """A REDIS_URL that names no Redis this node can use."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: Kind
    url: str
    hosts: tuple[tuple[str, int], ...] = ()  # seeds (cluster) or Sentinels
    service: str = ""  # the Sentinel master name
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """What `url` names; raises BadRedisUrl with a reason a person can act on."""
    if url.startswith(SINGLE_SCHEMES):
        return RedisTarget("single", url)
    scheme, sep, rest = url.partition("://")
    kinds: dict[str, tuple[Kind, bool]] = {
        "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
        "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True)}
    if not sep or scheme not in kinds:
        raise BadRedisUrl("REDIS_URL must start with redis://, rediss://, unix://, "
                          "redis+cluster:// or redis+sentinel://")
    kind, tls = kinds[scheme]
    rest, _, query = rest.partition("?")
    userinfo, _, rest = rest.rpartition("@")
    netloc, _, path = rest.partition("/")
    username, password = _credentials(userinfo)
    options = _options(query, allowed={"sentinel_password"} if kind == "sentinel" else set())
    hosts = tuple(_host(item, DEFAULT_PORT[kind]) for item in netloc.split(","))
    parts = [p for p in path.split("/") if p]
    if kind == "cluster":
        if parts:
            raise BadRedisUrl("REDIS_URL: a redis+cluster:// URL has no path (a cluster has "
                              "only db 0)")
        return RedisTarget(kind, url, hosts, username=username, password=password, tls=tls)
    if not parts or len(parts) > 2:
        raise BadRedisUrl("REDIS_URL: a redis+sentinel:// URL ends with /service or "
                          "/service/db")
    return RedisTarget(kind, url, hosts, service=unquote(parts[0]),
                       db=_number(parts[1], "db") if len(parts) == 2 else 0,
                       username=username, password=password, tls=tls,
                       sentinel_password=options.get("sentinel_password"))


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:
        return None, unquote(user)  # `password@host`, as redis-py reads it
    return unquote(user) or None, unquote(password) or None


def _options(query: str, allowed: set[str]) -> dict[str, str]:
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise BadRedisUrl(f"REDIS_URL option {unknown[0]!r} is not understood")
    return options


def _host(item: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise BadRedisUrl(f"REDIS_URL names an empty host in {item!r}")
    return host, _number(port, "port") if port else default_port


def _number(text: str, what: str) -> int:
    if not text.isdigit():
        raise BadRedisUrl(f"REDIS_URL {what} {text!r} is not a number")
    return int(text)
