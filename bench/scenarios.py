"""The five scenarios: what each generator is asked to do, and the figures it yields.

CPU figures are the CPU time (user + system, all threads) of both nodes plus redis-server
during the measured phase, divided by the frames delivered to clients.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench import procstat
from bench.runner import BenchFailure, GenRun, Plan, base_spec, run_gens, split
from bench.systems import Cluster

CORES = 2


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def traffic_figures(run: GenRun) -> dict[str, Any]:
    """Delivery, latency and CPU figures shared by the relay and chat scenarios."""
    received = sum(r["received"] for r in run.results)
    latencies = [x for r in run.results for x in r["latencies_ms"]]
    elapsed = max((r["elapsed"] or run.wall) for r in run.results)
    measured = procstat.total(run.cpu.values())
    return {
        "delivered": received,
        "delivered_per_s": round(received / elapsed, 1),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "cpu_us_per_msg": round(measured / received * 1e6, 2),
        "cpu_s": run.cpu,
        "gen_cpu_us_per_msg": round(run.gen_cpu / received * 1e6, 2),
        # share of both cores used by the measured processes and generators, and by anything
        # at all (other work on a shared machine shows as the difference)
        "machine_busy": round((measured + run.gen_cpu) / run.wall / CORES, 3),
        "machine_busy_all": run.extra.get("machine_busy_all"),
    }


def relay(cluster: Cluster, plan: Plan, window: int | None = None) -> dict[str, Any]:
    """Fixed rate (`window` None) or as fast as a bounded in-flight window allows."""
    rooms = [f"r{i}" for i in range(plan.rooms)]
    specs = []
    for gen, share in enumerate(split(rooms, plan.gens)):
        spec = base_spec(cluster, "relay", gen)
        spec["rooms"] = [spec["prefix"] + r for r in share]
        if window:
            spec.update(window=window, duration=plan.max_seconds)
        else:
            spec.update(rate=plan.rate * len(share) / len(rooms), duration=plan.relay_seconds)
        specs.append(spec)
    return traffic_figures(run_gens(cluster, specs))


def max_relay(cluster: Cluster, plan: Plan) -> dict[str, Any]:
    return relay(cluster, plan, window=plan.window)


def chat(cluster: Cluster, plan: Plan) -> dict[str, Any]:
    rooms = [f"c{i}" for i in range(plan.chat_rooms)]
    specs = []
    for gen, share in enumerate(split(rooms, plan.gens)):
        spec = base_spec(cluster, "chat", gen)
        spec.update(rooms=[spec["prefix"] + r for r in share], size=plan.chat_size,
                    rate=plan.chat_rate * len(share) / len(rooms), duration=plan.chat_seconds)
        specs.append(spec)
    return traffic_figures(run_gens(cluster, specs))


def join(cluster: Cluster, plan: Plan) -> dict[str, Any]:
    specs = []
    for gen in range(plan.gens):
        spec = base_spec(cluster, "join", gen)
        spec.update(pairs=plan.join_pairs // plan.gens,
                    parallel=max(1, plan.join_parallel // plan.gens))
        specs.append(spec)
    run = run_gens(cluster, specs)
    latencies = [x for r in run.results for x in r["latencies_ms"]]
    return {"joins": len(latencies), "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99), "max_ms": max(latencies)}


def settled_rss(pid: int, cap: float = 15.0) -> int:
    """RSS once it stops moving (within 1% over half a second), or after `cap` seconds."""
    deadline = time.monotonic() + cap
    last = procstat.rss_bytes(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = procstat.rss_bytes(pid)
        if abs(now - last) <= last * 0.01:
            return now
        last = now
    return last


def idle(cluster: Cluster, plan: Plan, peers: int) -> dict[str, Any]:
    """RSS growth of a fresh node 0 per idle connection (rooms of two, all on node 0)."""
    cluster.restart_node(0)
    _idle_run(cluster, min(200, peers), plan.gens)  # warm-up: imports, caches, first arenas
    pid = cluster.pids()["node0"]
    before = settled_rss(pid)

    def measure(c: Cluster) -> dict[str, Any]:
        return {"rss_after": settled_rss(pid)}

    run = _idle_run(cluster, peers, plan.gens, measure)
    connected = sum(r["connected"] for r in run.results)
    if connected != peers:
        raise BenchFailure(f"{cluster.spec.name}: {connected} of {peers} idle peers connected")
    after = run.extra["rss_after"]
    return {"peers": peers, "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "kb_per_conn": round((after - before) / peers / 1024, 2)}


def _idle_run(cluster: Cluster, peers: int, gens: int,
              hook: Callable[[Cluster], dict[str, Any]] | None = None) -> GenRun:
    specs = []
    for gen in range(gens):
        spec = base_spec(cluster, "idle", gen)
        spec.update(peers=peers // gens, setup_timeout=240)
        specs.append(spec)
    return run_gens(cluster, specs, after_ready=hook)


SCENARIOS: dict[str, Callable[[Cluster, Plan], dict[str, Any]]] = {
    "relay": relay,
    "max": max_relay,
    "chat": chat,
    "join": join,
}
