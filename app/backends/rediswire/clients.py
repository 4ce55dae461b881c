"""redis-py clients for each `REDIS_URL` form (see `app/config/redisurl.py`).

Two kinds of client:
- ordered: where a node's wire and pub/sub connection (`wire.py`, `subscriber.py`) read
  their server's address and credentials, and the scripts are loaded. It never retries
  by itself: a blind retry after a lost reply could publish twice. One Redis, or the
  master that Sentinel names (looked up again at each connect, so after a failover the
  node's reconnects land on the new master);
- plain: for reads, the heartbeat, workers and tools. For a cluster this is redis-py's
  `RedisCluster`, which routes each command to the master of its key's slot and follows
  MOVED (but does not retry a lost reply: the reaper writes through it); SCAN runs on
  every master.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from app.config.redisurl import RedisTarget, parse_redis_url

AnyRedis = Redis | RedisCluster

# Timeouts shared by every client: a vanished server is noticed within seconds.
TIMEOUTS: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}


def client_from_url(url: str) -> Redis:
    """An ordered client for one Redis or a Sentinel-managed master."""
    target = parse_redis_url(url)
    if target.kind == "cluster":
        raise ValueError("a redis+cluster:// URL has no single server: use cluster_client")
    if target.kind == "sentinel":
        return _sentinel_master(target)
    return Redis.from_url(url, protocol=2, retry=Retry(NoBackoff(), 0),
                          decode_responses=False, **TIMEOUTS)


def shard_client(host: str, port: int, target: RedisTarget) -> Redis:
    """An ordered client for one master of a cluster (its pipe and its pub/sub)."""
    return Redis(host=host, port=port, protocol=2, retry=Retry(NoBackoff(), 0),
                 decode_responses=False, username=target.username, password=target.password,
                 ssl=target.tls, **TIMEOUTS)


def cluster_client(target: RedisTarget) -> RedisCluster:
    """Follows MOVED/ASK (the command did not run), never retries a lost reply."""
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
                        protocol=2, decode_responses=False, username=target.username,
                        password=target.password, ssl=target.tls,
                        retry=Retry(NoBackoff(), 0), **TIMEOUTS)


def plain_client(url: str) -> AnyRedis:
    """A client for any form, for reads, workers and tools."""
    target = parse_redis_url(url)
    if target.kind == "cluster":
        return cluster_client(target)
    if target.kind == "sentinel":
        return _sentinel_master(target)
    return Redis.from_url(url, decode_responses=False, **TIMEOUTS)


async def close_client(client: AnyRedis) -> None:
    """Close a client, and the Sentinel connections behind a Sentinel-managed one."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()


def _sentinel_master(target: RedisTarget) -> Redis:
    no_retry = Retry(NoBackoff(), 0)
    sentinel = Sentinel(target.hosts, sentinel_kwargs={
        "password": target.sentinel_password, "retry": no_retry, "protocol": 2, **TIMEOUTS})
    master: Redis = sentinel.master_for(
        target.service, db=target.db, username=target.username, password=target.password,
        ssl=target.tls, protocol=2, retry=no_retry, decode_responses=False, **TIMEOUTS)
    return master
