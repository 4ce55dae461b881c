"""Reliability figures: how fast the cluster heals, measured on real processes.

    .venv/bin/python scripts/reliability.py [--trials 3] [--json out.json]

Each trial starts a private redis-server, three `python -m app` nodes and the reaper on
loopback, at default timing settings, and measures:

- crash: `kill -9` of one node with 30 peers in 10 rooms (10 on the killed node) until
  every surviving peer has received `peer-left` for its lost room-mate;
- redis: redis-server killed, restarted empty after 1 s; from its return until every node
  is ready again and a cross-node relay arrives, and until a peer that left during the
  outage is announced to its room-mates;
- drain: SIGTERM to one node while 10 pairs on the other two nodes relay 100 frames per
  second each: frames lost between them (and the drained node's exit time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from signaling_client.client import SignalingClient

from tests.support.peers import barrier
from tests.support.procs import NodeProcess
from tests.support.topology import ProcessCluster


async def rooms_across(c: ProcessCluster, count: int) -> dict[str, list[SignalingClient]]:
    rooms = {}
    for r in range(count):
        clients = [await SignalingClient.connect(url, f"r{r}", f"p{i}")
                   for i, url in enumerate(c.urls())]
        await barrier(clients)
        rooms[f"r{r}"] = clients
    return rooms


async def close(rooms: dict[str, list[SignalingClient]]) -> None:
    for clients in rooms.values():
        for client in clients:
            await client.close()


async def crash_trial() -> dict[str, float]:
    c = ProcessCluster.start(nodes=3)
    try:
        rooms = await rooms_across(c, 10)
        assert c.nodes[1].proc is not None
        c.nodes[1].proc.send_signal(signal.SIGKILL)
        start = time.monotonic()
        survivors = [x for clients in rooms.values() for x in (clients[0], clients[2])]
        await asyncio.gather(*(s.next_of("peer-left", timeout=30) for s in survivors))
        took = time.monotonic() - start
        await close(rooms)
        return {"crash_to_last_peer_left_s": took}
    finally:
        c.stop()


async def all_ready(c: ProcessCluster) -> None:
    async with aiohttp.ClientSession() as http:
        for url in c.urls():
            while True:
                async with http.get(f"{url}/ready") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.02)


async def redis_trial() -> dict[str, float]:
    c = ProcessCluster.start(nodes=3)
    try:
        rooms = await rooms_across(c, 4)
        a, b, gone = rooms["r0"]
        c.redis.kill()
        await asyncio.sleep(0.5)
        await gone.close()  # leaves while Redis is away
        await asyncio.sleep(0.5)
        c.redis.restart()
        back = time.monotonic()
        await asyncio.wait_for(all_ready(c), 30)
        ready = time.monotonic() - back
        while True:  # the first cross-node relay that gets through
            await a.ice("p1", {"t": time.monotonic()})
            frame = await b.next_of("ice", timeout=10)
            if frame.sender == "p0":
                break
        relayed = time.monotonic() - back
        await a.next_of("peer-left", timeout=30)
        announced = time.monotonic() - back
        await close({k: v for k, v in rooms.items() if k != "r0"} | {"r0": [a, b]})
        return {"redis_return_to_ready_s": ready, "redis_return_to_relay_s": relayed,
                "redis_return_to_leave_announced_s": announced}
    finally:
        c.stop()


async def drain_trial() -> dict[str, float]:
    c = ProcessCluster.start(nodes=2)
    drained = NodeProcess({**c.nodes[0].env, "NODE_ID": "drained", "DRAIN_SECONDS": "5"}).start()
    try:
        pairs = [(await SignalingClient.connect(c.urls()[0], f"d{i}", "x"),
                  await SignalingClient.connect(c.urls()[1], f"d{i}", "y"),
                  await SignalingClient.connect(drained.url, f"d{i}", "z")) for i in range(10)]
        for trio in pairs:
            await barrier(list(trio))
        stop = asyncio.Event()

        async def send(x: SignalingClient) -> int:
            n = 0
            while not stop.is_set():
                await x.ice("y", {"n": n})
                n += 1
                await asyncio.sleep(0.01)
            return n

        async def receive(y: SignalingClient, sent: asyncio.Task[int]) -> int:
            got = 0
            while not sent.done() or got < sent.result():
                try:
                    frame = await y.recv(timeout=2)
                except TimeoutError:
                    break
                got += frame.type == "ice"
            return got

        senders = [asyncio.create_task(send(x)) for x, _, _ in pairs]
        receivers = [asyncio.create_task(receive(y, s)) for (_, y, _), s in zip(
            pairs, senders, strict=True)]
        await asyncio.sleep(1)
        drained.signal(signal.SIGTERM)
        start = time.monotonic()
        assert drained.proc is not None
        await asyncio.to_thread(drained.proc.wait, 30)
        exited = time.monotonic() - start
        await asyncio.sleep(1)
        stop.set()
        sent = sum(await asyncio.gather(*senders))
        got = sum(await asyncio.gather(*receivers))
        for trio in pairs:
            for client in trio:
                await client.close()
        return {"drain_frames_sent": sent, "drain_frames_lost": sent - got,
                "drain_exit_s": exited}
    finally:
        drained.kill()
        c.stop()


def summarise(trials: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = trials[0].keys()
    return {k: {"min": min(t[k] for t in trials), "median": statistics.median(
        t[k] for t in trials), "max": max(t[k] for t in trials)} for k in keys}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for trial in (crash_trial, redis_trial, drain_trial):
        runs = [await trial() for _ in range(args.trials)]
        results.update(summarise(runs))
    print(f"| figure ({args.trials} trials) | min | median | max |")
    print("|---|---|---|---|")
    for key, v in results.items():
        print(f"| {key} | {v['min']:.2f} | {v['median']:.2f} | {v['max']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
