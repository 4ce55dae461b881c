"""A raw connection to the server a redis-py pool points at, for every `REDIS_URL` form.

The publishing wire (`wire.py`) and the pub/sub connection (`subscriber.py`) speak RESP
themselves on an `asyncio.Protocol` (hiredis parses), so each needs a socket to the right
server: a Unix socket, TCP, TLS (`rediss://`, with the context redis-py built from the
URL's `ssl_*` options), or the master that Sentinel names at the moment of connecting (so
a reconnect after a failover lands on the new master). redis-py's pool is only where the
address and credentials are read; its connections are never used for these two paths.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# A connection that is gone, whoever noticed: uvloop raises RuntimeError ("the handler is
# closed") when a write meets a socket the server already closed.
LOST = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, RuntimeError)
# Error replies meaning "not this server" (a cluster's slot moved, or it fails over).
ELSEWHERE = (b"MOVED", b"ASK", b"TRYAGAIN", b"CLUSTERDOWN")


def speaks(pool: ConnectionPool) -> bool:
    """Can `open_connection` reach what `pool` points at? (Not an in-process fake.)"""
    return issubclass(pool.connection_class, Connection | UnixDomainSocketConnection)


async def open_connection(pool: ConnectionPool, protocol: asyncio.Protocol) -> None:
    """Connect `protocol` to the pool's server; the caller bounds the time."""
    kw = pool.connection_kwargs
    loop = asyncio.get_running_loop()
    if issubclass(pool.connection_class, UnixDomainSocketConnection):
        await loop.create_unix_connection(lambda: protocol, kw["path"])
        return
    if not speaks(pool):
        raise TypeError(f"cannot open a raw connection for {pool.connection_class.__name__}")
    if isinstance(pool, SentinelConnectionPool):
        host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
    else:
        host, port = kw.get("host", "localhost"), kw.get("port", 6379)
    ssl = None
    if issubclass(pool.connection_class, SSLConnection):
        ssl = pool.connection_class(**kw).ssl_context.get()
    await loop.create_connection(lambda: protocol, host, port, ssl=ssl,
                                 server_hostname=host if ssl is not None else None)


def handshake(pool: ConnectionPool, select: bool = True) -> list[tuple[Any, ...]]:
    """The commands that make a fresh connection usable: AUTH, and SELECT for `/db`."""
    kw = pool.connection_kwargs
    hello: list[tuple[Any, ...]] = []
    if kw.get("password"):
        user = kw.get("username")
        hello.append(("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"]))
    if select and kw.get("db"):
        hello.append(("SELECT", kw["db"]))
    return hello


def elsewhere(error: str | bytes) -> bool:
    """Is this error reply a cluster saying the key's slot is served by another master?"""
    raw = error.encode() if isinstance(error, str) else error
    return raw.startswith(ELSEWHERE)
