from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app.backend.redis import client_from_url
from app.keys import Keys
from app.server import create_app
from tests.support.cluster import (
    ADMIN_TOKEN,
    Cluster,
    NodeFactory,
    in_process,
    node_settings,
    unique,
)
from tests.support.procs import NodeProcess, RedisServer, wait_until

IN_PROCESS = ("memory", "fakeredis", "redis")
StartServer = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session; tests isolate by key prefix and room."""
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def node_processes(redis_server: RedisServer) -> Iterator[list[NodeProcess]]:
    """Two real `python -m app` nodes on the session's redis-server, shared by tests."""
    prefix = f"p{os.getpid()}:"
    nodes = [NodeProcess({"REDIS_URL": redis_server.url, "NODE_ID": f"proc{i}",
                          "KEY_PREFIX": prefix, "ADMIN_TOKEN": ADMIN_TOKEN}) for i in range(2)]
    try:
        for node in nodes:
            node.start(wait_ready=False)
        for node in nodes:
            wait_until(node.is_ready, 15, f"node {node.url}")
        yield nodes
    finally:
        for node in nodes:
            node.kill()


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


@pytest.fixture(params=[*IN_PROCESS, "processes"])
async def cluster(request: pytest.FixtureRequest, start_server: StartServer
                  ) -> AsyncIterator[Cluster]:
    """Two nodes of one cluster, for every backend form (see tests/support/cluster.py)."""
    kind = request.param
    if kind == "processes":
        nodes: list[NodeProcess] = request.getfixturevalue("node_processes")
        redis = request.getfixturevalue("redis_server")
        c = Cluster("processes", [n.url for n in nodes], Keys(nodes[0].env["KEY_PREFIX"]),
                    redis=client_from_url(redis.url), extra={"nodes": nodes})
    else:
        url = request.getfixturevalue("redis_server").url if kind == "redis" else None
        c = await in_process(kind, 2, start_server, url)
    yield c
    if c.redis is not None:
        await c.redis.aclose()


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
