"""python-socketio with AsyncRedisManager on aiohttp: the Python peer system.

The same semantics as `sio_server.js` (see there): join with an ack that lists the room's
peers (kept in a Redis set), signal to one peer of the room, chat to the whole room.
`async_handlers=False` keeps each connection's events in order, as signaling needs: with
the default, every event runs in its own task and relays can overtake each other.
"""

from __future__ import annotations

import os
from typing import Any

import socketio
from aiohttp import web
from redis.asyncio import Redis

PREFIX = "bench:pysio:"


def create_app(redis_url: str) -> web.Application:
    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=manager,
                               async_handlers=False, transports=["websocket"],
                               cors_allowed_origins="*", logger=False, engineio_logger=False)
    store = Redis.from_url(redis_url)
    members: dict[str, tuple[str, str]] = {}  # sid -> (room, peer)

    @sio.on("join")
    async def join(sid: str, msg: dict[str, str]) -> dict[str, Any]:
        room, peer = msg["room"], msg["peer"]
        key = f"{PREFIX}room:{room}"
        async with store.pipeline(transaction=True) as pipe:
            _, present = await pipe.sadd(key, peer).smembers(key).execute()
        members[sid] = (room, peer)
        await sio.enter_room(sid, room)
        await sio.enter_room(sid, f"{room}/{peer}")
        await sio.emit("new-peer", peer, to=room, skip_sid=sid)
        return {"peer": peer, "peers": [p.decode() for p in present if p.decode() != peer]}

    @sio.on("signal")
    async def signal(sid: str, msg: dict[str, Any]) -> None:
        room, peer = members[sid]
        out = {"type": msg["type"], "room": room, "from": peer, "to": msg["to"],
               "data": msg["data"]}
        await sio.emit("signal", out, to=f"{room}/{msg['to']}")

    @sio.on("chat")
    async def chat(sid: str, data: Any) -> None:
        room, peer = members[sid]
        await sio.emit("chat", {"type": "chat", "room": room, "from": peer, "data": data},
                       to=room)

    @sio.on("disconnect")
    async def disconnect(sid: str, *_: Any) -> None:
        if sid in members:
            room, peer = members.pop(sid)
            await store.srem(f"{PREFIX}room:{room}", peer)
            await sio.emit("peer-left", peer, to=room)

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ready", ready)
    sio.attach(app)
    return app


if __name__ == "__main__":
    web.run_app(create_app(os.environ["REDIS_URL"]), host=os.environ.get("HOST", "127.0.0.1"),
                port=int(os.environ["PORT"]), access_log=None, print=None)
