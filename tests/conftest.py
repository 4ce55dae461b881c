from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app.backends.rediswire.clients import plain_client
from app.backends.rediswire.keys import Keys
from app.backends.single import client_from_url
from app.node import create_app
from tests.support import hygiene
from tests.support.cluster import (
    ADMIN_TOKEN,
    Cluster,
    NodeFactory,
    in_process,
    node_settings,
    unique,
)
from tests.support.procs import NodeProcess, RedisServer
from tests.support.redis_setups import ClusterServers
from tests.support.wait import wait_until

IN_PROCESS = ("memory", "fakeredis", "redis")
_SESSION: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    _SESSION["root"] = hygiene.start()
    _SESSION["started"] = time.monotonic()


def pytest_unconfigure(config: pytest.Config) -> None:
    if "root" in _SESSION:
        hygiene.finish(_SESSION.pop("root"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    left = hygiene.marked_processes()
    if left:
        terminalreporter.write_line(
            f"stopping {len(left)} process(es) the tests left running: "
            + "; ".join(hygiene.describe(pid) for pid in left), yellow=True)
    seconds = time.monotonic() - _SESSION.get("started", time.monotonic())
    terminalreporter.write_line(f"suite duration: {seconds:.0f} s")
StartServer = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session; tests isolate by key prefix and room."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def node_processes(redis_server: RedisServer) -> Iterator[list[NodeProcess]]:
    """Two real `python -m app` nodes on the session's redis-server, shared by tests."""
    yield from start_nodes(redis_server.url, "proc", f"p{os.getpid()}:")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterServers]:
    """A Redis Cluster of 3 masters for the session (`redis-cli --cluster create`)."""
    servers = ClusterServers(masters=3).start()
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def cluster_processes(redis_cluster: ClusterServers) -> Iterator[list[NodeProcess]]:
    """Two real nodes on the session's Redis Cluster (`REDIS_URL=redis+cluster://...`)."""
    yield from start_nodes(redis_cluster.url, "cproc", f"k{os.getpid()}:")


def start_nodes(url: str, name: str, prefix: str, count: int = 2) -> Iterator[list[NodeProcess]]:
    nodes = [NodeProcess({"REDIS_URL": url, "NODE_ID": f"{name}{i}", "KEY_PREFIX": prefix,
                          "ADMIN_TOKEN": ADMIN_TOKEN}) for i in range(count)]
    try:
        for node in nodes:
            node.start(wait_ready=False)
        for node in nodes:
            wait_until(node.is_ready, 15, f"node {node.url}")
        yield nodes
    finally:
        for node in nodes:
            node.close()


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture(params=[*IN_PROCESS, "processes", "rediscluster"])
async def cluster(request: pytest.FixtureRequest, start_server: StartServer
                  ) -> AsyncIterator[Cluster]:
    """Two nodes of one cluster, for every backend form (see tests/support/cluster.py)."""
    kind = request.param
    if kind == "processes":
        nodes: list[NodeProcess] = request.getfixturevalue("node_processes")
        redis = request.getfixturevalue("redis_server")
        c = Cluster("processes", [n.url for n in nodes], Keys(nodes[0].env["KEY_PREFIX"]),
                    redis=client_from_url(redis.url), extra={"nodes": nodes})
    elif kind == "rediscluster":
        nodes = request.getfixturevalue("cluster_processes")
        servers: ClusterServers = request.getfixturevalue("redis_cluster")
        c = Cluster(kind, [n.url for n in nodes], Keys(nodes[0].env["KEY_PREFIX"]),
                    redis=plain_client(servers.url), extra={"nodes": nodes, "servers": servers})
    else:
        url = request.getfixturevalue("redis_server").url if kind == "redis" else None
        c = await in_process(kind, 2, start_server, url)
    yield c
    await c.close()


@pytest.fixture
def room() -> str:
    return unique("room")


@pytest.fixture
async def make_node(start_server: StartServer) -> NodeFactory:
    """One in-process node on the memory backend with the given settings; returns its URL."""
    async def make(**settings: Any) -> str:
        server = await start_server(create_app(node_settings(0, **settings)))
        return str(server.make_url("")).rstrip("/")

    return make


@pytest.fixture
async def url(make_node: NodeFactory) -> str:
    return await make_node()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
