"""`python -m app.cli.inspector`: a cluster's Redis as an operator thinks of it.

    python -m app.cli.inspector rooms    rooms with their peer counts
    python -m app.cli.inspector room R   room R's peers, each with its node and connection
    python -m app.cli.inspector nodes    nodes (alive, or dead with peers left) and peer counts
    python -m app.cli.inspector watch R  room R's envelopes, decoded, as they pass (Ctrl-C)

`redis-cli SUBSCRIBE` shows envelopes as msgpack bytes; `watch` prints each one readably,
with the frame JSON the receiving nodes write to their clients. REDIS_URL and KEY_PREFIX
come from the environment or `.env`, as for a node, or from --redis-url / --prefix. Every
REDIS_URL form works: one Redis, `redis+sentinel://` and `redis+cluster://` (there the
listings read every master, and `watch` subscribes to the room's shard channel).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from dotenv import load_dotenv
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from app.backends.rediswire.clients import AnyRedis, close_client, plain_client
from app.backends.rediswire.directory import RedisDirectory
from app.backends.rediswire.keys import Keys
from app.core import envelope
from app.core.envelope import BadEnvelope, Chat, Handed, Join, Kick, Leave, Relay, Resume, Sync


def describe(payload: bytes, now: float | None = None) -> str:
    """One readable line for one envelope (or for bytes that are not one)."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    head = stamp.strftime("%H:%M:%S.%f")[:-3]
    try:
        env = envelope.decode(payload)
    except BadEnvelope as exc:
        return f"{head} BAD    {len(payload)} bytes ({exc}): {payload[:64].hex()}"
    if isinstance(env, Join):
        more = " takeover" if env.takeover else ""
        return f"{head} join   {env.peer} node={env.node} conn={env.conn}{more}"
    if isinstance(env, Leave):
        return f"{head} leave  {env.peer} node={env.node} conn={env.conn}"
    if isinstance(env, Kick):
        return (f"{head} kick   {env.peer or '(whole room)'} node={env.node} code={env.code} "
                f"reason={env.reason!r}")
    if isinstance(env, Sync):
        return f"{head} sync   node={env.node} members={','.join(sorted(env.members))}"
    if isinstance(env, Resume):
        return f"{head} resume {env.peer} node={env.node} conn={env.conn}"
    if isinstance(env, Handed):
        return f"{head} handed {env.peer} node={env.node} to conn={env.conn}"
    age = f"{max(0.0, (now or time.time()) - env.sent) * 1000:.1f}ms"
    frame = env.frame.decode(errors="replace")
    if isinstance(env, Relay):
        return f"{head} relay  -> {env.to} node={env.node} age={age} {frame}"
    assert isinstance(env, Chat)
    return f"{head} chat   node={env.node} age={age} {frame}"


async def watch(client: AnyRedis, keys: Keys, room: str, out: TextIO) -> None:
    """Print every envelope of `room` until cancelled; says when the subscription is live.

    On a Redis Cluster the room's channel is a shard channel (SSUBSCRIBE on its master)."""
    channel = keys.room_channel(room)
    if isinstance(client, RedisCluster):
        await client.initialize()  # the slot map, to find the channel's master
        sharded = client.pubsub()
        await sharded.ssubscribe(channel)
        try:
            await _print_envelopes(lambda: sharded.get_sharded_message(timeout=1.0), channel,
                                   out)
        finally:
            await sharded.aclose()
        return
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    try:
        await _print_envelopes(lambda: pubsub.get_message(timeout=1.0), channel, out)
    finally:
        await pubsub.aclose()


async def _print_envelopes(next_message: Callable[[], Awaitable[Any]], channel: str,
                           out: TextIO) -> None:
    while True:
        msg = await next_message()
        if msg is None:
            continue
        if msg["type"] in ("subscribe", "ssubscribe"):
            print(f"watching {channel} (Ctrl-C to stop)", file=out, flush=True)
        elif msg["type"] in ("message", "smessage"):
            print(describe(msg["data"]), file=out, flush=True)


async def show(client: AnyRedis, keys: Keys, what: str, room: str | None, as_json: bool,
               out: TextIO) -> int:
    """`rooms`, `room R` or `nodes` as a table (or JSON); 1 when a room has no peers."""
    directory = RedisDirectory(client, keys)
    rows: list[dict[str, Any]]
    if what == "rooms":
        rows = [{"room": r, "peers": n} for r, n in (await directory.rooms()).items()]
    elif what == "room":
        assert room is not None
        rows = [dataclasses.asdict(p) for p in await directory.room(room)]
    else:
        rows = [_node_row(dataclasses.asdict(n)) for n in await directory.nodes()]
    if as_json:
        print(orjson.dumps(rows).decode(), file=out)
    else:
        _table(rows, out)
    return 1 if what == "room" and not rows else 0


def _node_row(node: dict[str, Any]) -> dict[str, Any]:
    details = node.pop("details")
    started = details.get("started")
    when = datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds") if started else ""
    return {**node, "host": details.get("host", ""), "pid": details.get("pid", ""),
            "started": when}


def _table(rows: list[dict[str, Any]], out: TextIO) -> None:
    if not rows:
        print("(none)", file=out)
        return
    cols = list(rows[0])
    cells = [[str(row[c]).lower() if isinstance(row[c], bool) else str(row[c]) for c in cols]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    for line in [[c.upper() for c in cols], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip(),
              file=out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=argparse.SUPPRESS, help="default: $REDIS_URL")
    common.add_argument("--prefix", default=argparse.SUPPRESS, help="default: $KEY_PREFIX")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of a table")
    parser = argparse.ArgumentParser(prog="python -m app.cli.inspector", parents=[common],
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("rooms", parents=[common], help="rooms and their peer counts")
    sub.add_parser("room", parents=[common], help="a room's peers").add_argument("room")
    sub.add_parser("nodes", parents=[common], help="nodes and their peer counts")
    sub.add_parser("watch", parents=[common], help="decode a room's envelopes live"
                   ).add_argument("room")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, out: TextIO) -> int:
    url = getattr(args, "redis_url", None) or os.environ.get("REDIS_URL", "")
    if not url:
        print("no Redis: set REDIS_URL (or .env) or pass --redis-url", file=sys.stderr)
        return 2
    keys = Keys(getattr(args, "prefix", None) or os.environ.get("KEY_PREFIX", "sig:"))
    try:
        client = plain_client(url)
    except ValueError as exc:  # BadRedisUrl
        print(f"bad REDIS_URL: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "watch":
            await until_signalled(watch(client, keys, args.room, out))
            return 0
        return await show(client, keys, args.command, getattr(args, "room", None),
                          getattr(args, "json", False), out)
    except (RedisError, RedisClusterException, OSError) as exc:
        print(f"redis at {url}: {exc}", file=sys.stderr)
        return 1
    finally:
        await close_client(client)


async def until_signalled(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it ends or SIGINT/SIGTERM arrives. The handlers are the loop's own,
    so Ctrl-C stops `watch` even when the shell started it with SIGINT ignored (`setsid`,
    `nohup`, a CI runner), and so does the SIGTERM a supervisor sends."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> None:
    load_dotenv(os.environ.get("ENV_FILE", ".env"), override=False)
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(asyncio.run(run(args, sys.stdout)))


if __name__ == "__main__":
    main()
