"""Relay throughput and the spread of pub/sub work: one Redis against a 3-master cluster.

    .venv/bin/python -m bench.cluster_scale [--rooms 60] [--seconds 10] [--window 20]
                                            [--trials 3] [--json out.json]

For each backend it starts the Redis side (one redis-server; or 3 masters made with
`redis-cli --cluster create`), two `python -m app` nodes and, in this process, `--rooms`
rooms each with a sender on node 0 and a receiver on node 1. Every sender relays `ice`
frames to its receiver as fast as it may with `--window` frames in flight, for
`--seconds`; `--trials` runs per backend, alternating between them. Reported per backend
(medians over trials): frames delivered per second, latency (p50, p99), and
per Redis master the envelopes it published (SPUBLISH, or PUBLISH on one Redis, counted by
INFO commandstats, script calls included) and the CPU it used. The cluster's own bus
counters show that sharded publishes are not broadcast; a classic PUBLISH on the same
cluster is measured beside it for contrast. Every receiver checks order and completeness.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.procs import NodeProcess, RedisServer
from tests.support.redis_setups import ClusterServers, info
from tests.support.wait import wait_until


@dataclass
class Pair:
    room: str
    sender: aiohttp.ClientWebSocketResponse
    receiver: aiohttp.ClientWebSocketResponse
    credit: asyncio.Semaphore
    sent: int = 0
    got: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def master_stats(port: int) -> dict[str, float]:
    cmd = info(port, "commandstats")
    cpu = info(port, "cpu")

    def calls(name: str) -> float:
        raw = cmd.get(f"cmdstat_{name}")
        return float(raw.split(",")[0].split("=")[1]) if raw else 0.0

    return {"spublish": calls("spublish"), "publish": calls("publish"),
            "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}


def bus_stats(port: int) -> dict[str, int]:
    with redis.Redis(port=port) as r:
        raw = r.execute_command("CLUSTER", "INFO").decode()
    fields = dict(line.split(":", 1) for line in raw.splitlines() if ":" in line)
    return {k.removeprefix("cluster_stats_messages_"): int(v) for k, v in fields.items()
            if k.startswith("cluster_stats_messages_publish")}


async def connect(http: aiohttp.ClientSession, url: str, room: str, peer: str
                  ) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{url.replace('http', 'ws')}/ws/{room}/{peer}")
    welcome = orjson.loads((await ws.receive()).data)
    assert welcome["type"] == "welcome", welcome
    return ws


async def send_loop(pair: Pair, until: float) -> None:
    while time.monotonic() < until:
        await pair.credit.acquire()
        frame = {"type": "ice", "to": "rx", "data": {"n": pair.sent, "t": time.monotonic()}}
        await pair.sender.send_str(orjson.dumps(frame).decode())
        pair.sent += 1


async def receive_loop(pair: Pair) -> None:
    async for msg in pair.receiver:
        frame = orjson.loads(msg.data)
        if frame["type"] != "ice":
            continue  # new-peer
        data = frame["data"]
        if data["n"] != pair.got:
            pair.errors.append(f"expected {pair.got}, got {data['n']}")
        pair.got = data["n"] + 1
        pair.latencies.append(time.monotonic() - data["t"])
        pair.credit.release()


async def drive(urls: list[str], rooms: int, seconds: float, window: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        pairs = []
        for i in range(rooms):
            room = f"bench{i}"
            rx = await connect(http, urls[1], room, "rx")
            tx = await connect(http, urls[0], room, "tx")
            pairs.append(Pair(room, tx, rx, asyncio.Semaphore(window)))
        readers = [asyncio.create_task(receive_loop(p)) for p in pairs]
        await asyncio.sleep(0.5)  # the join announcements settle
        started = time.monotonic()
        await asyncio.gather(*(send_loop(p, started + seconds) for p in pairs))
        async with asyncio.timeout(30):  # everything sent must arrive: all credit back
            for p in pairs:
                for _ in range(window):
                    await p.credit.acquire()
        elapsed = time.monotonic() - started
        for task in readers:
            task.cancel()
        for p in pairs:
            await p.sender.close()
            await p.receiver.close()
    latencies = sorted(x for p in pairs for x in p.latencies)
    delivered = sum(p.got for p in pairs)
    return {"delivered": delivered, "per_s": delivered / elapsed,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "errors": [e for p in pairs for e in p.errors][:5]}


def start_nodes(url: str) -> list[NodeProcess]:
    env = {"REDIS_URL": url, "KEY_PREFIX": "bench:", "RATE_LIMIT_PER_S": "0",
           "RATE_LIMIT_BYTES_PER_S": "0",
           "LOG_LEVEL": "warning", "WS_HEARTBEAT_SECONDS": "0"}
    nodes = [NodeProcess({**env, "NODE_ID": f"bench{i}"}) for i in range(2)]
    for node in nodes:
        node.start(wait_ready=False)
    for node in nodes:
        wait_until(node.is_ready, 20, f"node {node.url}")
    return nodes


def run_backend(name: str, url: str, masters: list[int], args: argparse.Namespace
                ) -> dict[str, Any]:
    nodes = start_nodes(url)
    try:
        before = {port: master_stats(port) for port in masters}
        result = asyncio.run(drive([n.url for n in nodes], args.rooms, args.seconds,
                                   args.window))
        after = {port: master_stats(port) for port in masters}
    finally:
        for node in nodes:
            node.kill()
    result["masters"] = {
        str(port): {"envelopes": int(after[port]["spublish"] - before[port]["spublish"]
                                     + after[port]["publish"] - before[port]["publish"]),
                    "cpu_s": round(after[port]["cpu"] - before[port]["cpu"], 2)}
        for port in masters}
    result["backend"] = name
    return result


def settled_bus_stats(masters: list[int]) -> dict[int, dict[str, int]]:
    """Bus counters once they stop moving (messages in flight between masters land)."""
    last: dict[int, dict[str, int]] = {}
    while True:
        now = {p: bus_stats(p) for p in masters}
        if now == last:
            return now
        last = now
        time.sleep(0.2)


def broadcast_contrast(cluster: ClusterServers, messages: int = 2000) -> dict[str, Any]:
    """Classic PUBLISH vs SPUBLISH on the cluster: how many bus messages each master got."""
    masters = cluster.primaries()
    out: dict[str, Any] = {}
    for command in ("PUBLISH", "SPUBLISH"):
        before = settled_bus_stats(masters)
        channel = "contrast:{room}"
        with redis.Redis(port=cluster.master_of(channel)) as r:
            for _ in range(messages):
                r.execute_command(command, channel, b"x" * 200)
        after = settled_bus_stats(masters)
        out[command] = {str(p): sum(after[p].get(k, 0) - before[p].get(k, 0)
                                    for k in after[p] if k.endswith("received"))
                        for p in masters}
    return out


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over trials; envelopes and CPU per master summed over them."""
    masters: dict[str, dict[str, float]] = {}
    for run in runs:
        for port, m in run["masters"].items():
            into = masters.setdefault(port, {"envelopes": 0, "cpu_s": 0.0})
            into["envelopes"] += m["envelopes"]
            into["cpu_s"] += m["cpu_s"]
    return {"backend": name, "trials": len(runs),
            "per_s": statistics.median(r["per_s"] for r in runs),
            "per_s_all": [round(r["per_s"]) for r in runs],
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "masters": masters}


def report(results: list[dict[str, Any]], contrast: dict[str, Any]) -> str:
    lines = ["| backend | frames/s delivered (median; each trial) | p50 | p99 | "
             "envelopes per master | Redis CPU per master | Redis CPU per 100k envelopes |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        masters = r["masters"].values()
        total = sum(m["envelopes"] for m in masters) or 1
        shares = " / ".join(f"{100 * m['envelopes'] / total:.0f}%" for m in masters)
        cpu = " / ".join(f"{m['cpu_s']:.2f} s" for m in masters)
        unit = " / ".join(f"{1e5 * m['cpu_s'] / max(m['envelopes'], 1):.2f} s" for m in masters)
        each = ", ".join(f"{x:,}" for x in r["per_s_all"])
        lines.append(f"| {r['backend']} | {r['per_s']:,.0f} ({each}) | {r['p50_ms']:.1f} ms | "
                     f"{r['p99_ms']:.1f} ms | {shares} | {cpu} | {unit} |")
    lines.append("")
    for command, per_master in contrast.items():
        got = ", ".join(str(v) for v in per_master.values())
        lines.append(f"{command} x2000 on one master: cluster-bus publish messages received "
                     f"per master: {got}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cluster_scale", description=__doc__)
    p.add_argument("--rooms", type=int, default=60)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--window", type=int, default=20, help="frames in flight per sender")
    p.add_argument("--trials", type=int, default=3, help="runs per backend, alternating")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    single = RedisServer().start()
    cluster = ClusterServers(masters=3).start()
    backends = {"one Redis": (single.url, [single.port]),
                "Redis Cluster, 3 masters": (cluster.url, cluster.primaries())}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in backends}
    try:
        for _ in range(args.trials):  # alternate, so drifting machine load hits both
            for name, (url, masters) in backends.items():
                run = run_backend(name, url, masters, args)
                if run["errors"]:
                    raise SystemExit(f"{name}: delivery errors {run['errors']}")
                runs[name].append(run)
        contrast = broadcast_contrast(cluster)
    finally:
        single.kill()
        cluster.stop()
    results = [summarise(name, r) for name, r in runs.items()]
    print(report(results, contrast))
    if args.json:
        args.json.write_text(orjson.dumps({"args": vars(args) | {"json": str(args.json)},
                                           "results": results, "contrast": contrast},
                                          option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
