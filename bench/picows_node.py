"""`python -m bench.picows_node`: the node with picows as its WebSocket codec, for the bench.

Not a way to run the service: it exists so that the relay benchmark can compare codecs
inside the whole node (`python -m bench --systems ours,ours-picows`). The signaling logic,
the backend and `Peer` are the node's own (`create_app` runs their lifecycle); only the
WebSocket edge differs: picows parses client frames and calls `SignalingService.handle_text`
from its callback, and the node's `Peer` writes its coalesced, already-framed output to the
transport underneath picows, as it does on the raw transport. No admission checks (ids,
origins, tokens, per-address caps): the benchmark needs none. picows cannot answer a plain
GET with 200, so readiness is a WebSocket upgrade to `/ws/ready/probe` (bench/systems.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import uvloop
from aiohttp import web
from picows import WSListener, WSMsgType, ws_create_server

from app.config.settings import Settings, settings_or_exit
from app.core.service import SignalingService
from app.edge.connection import _Continue
from app.edge.peer import Peer, as_peer
from app.edge.state import SERVICE
from app.node import create_app
from app.obs.logs import configure_logging


class Edge(WSListener):  # type: ignore[misc]
    """One client connection: join, frames in order, leave."""

    def __init__(self, service: SignalingService, room: str, peer_id: str) -> None:
        self.service, self.room, self.peer_id = service, room, peer_id
        self.peer: Peer | None = None
        self.pending: list[str] = []  # frames that arrived before the join, or while busy
        self.busy: asyncio.Future[None] | None = None
        self.raw: asyncio.Transport | None = None
        self.tasks: set[asyncio.Future[object]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_ws_connected(self, transport: Any) -> None:
        self.raw = transport.underlying_transport
        self._spawn(self._join())

    async def _join(self) -> None:
        if self.room == "ready":
            return  # the readiness probe
        self.peer = as_peer(await self.service.join(self.room, self.peer_id, None))
        assert self.raw is not None
        self.peer.attach(self.raw)
        self._run()

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.pending.append(frame.get_payload_as_utf8_text())
            if self.peer is not None and self.busy is None:
                self._run()
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def _run(self) -> None:
        assert self.peer is not None
        while self.pending and self.busy is None:
            coro: Coroutine[Any, Any, None] = self.service.handle_text(
                self.peer, self.pending.pop(0))
            try:
                waiting = coro.send(None)
            except StopIteration:
                continue
            self.busy = asyncio.ensure_future(_Continue(coro, waiting))
            self.busy.add_done_callback(self._done)

    def _done(self, _: asyncio.Future[None]) -> None:
        self.busy = None
        self._run()

    def on_ws_disconnected(self, transport: Any) -> None:
        if self.peer is not None:
            self.peer.detach()
            self._spawn(self.service.leave(self.peer))


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # backend and service up; no HTTP site
    service = app[SERVICE]

    def factory(request: Any) -> Edge | None:
        parts = request.path.decode().split("/")
        if len(parts) != 4 or parts[1] != "ws":
            return None
        return Edge(service, parts[2], parts[3])

    server = await ws_create_server(factory, settings.host, settings.port)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()


def main() -> None:
    settings = settings_or_exit(Settings.from_env)
    configure_logging(settings.log_level, settings.log_format, settings.node_id)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
