"""`python -m bench` (or `bench/run`, which installs the peers first): run every scenario
against this project and the peer systems, side by side, and write the table, the JSON
and the PNG chart under bench/results/. Exits 1 if any delivery check fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from bench import report, scenarios
from bench.runner import BenchFailure, Plan
from bench.systems import ROOT, Cluster, system_spec

ALL_SYSTEMS = ["ours", "go", "ws-node", "sio-node", "pysio"]
ALL_SCENARIOS = ["relay", "max", "chat", "join", "idle"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke-run sizes (under 2 minutes)")
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help="comma-separated")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma-separated")
    p.add_argument("--rate", type=int, help="relay frames/s in the fixed-rate scenario")
    p.add_argument("--gens", type=int, help="generator processes per scenario")
    p.add_argument("--repeat", type=int, help="rounds of each timed scenario (median)")
    p.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for this project's nodes (A/B runs)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--no-chart", action="store_true")
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan.quick() if args.quick else Plan()
    if args.rate:
        plan = replace(plan, rate=args.rate)
    if args.gens:
        plan = replace(plan, gens=args.gens)
    if args.repeat:
        plan = replace(plan, repeat=args.repeat)
    return plan


def run_all(clusters: dict[str, Cluster], plan: Plan, chosen: list[str]) -> dict[str, Any]:
    """Scenario by scenario, each system in turn, `plan.repeat` rounds, so that drifting
    load on this shared machine hits all systems alike; each figure is the median of its
    rounds (every round is kept under "rounds"). Idle runs last, as it restarts node 0."""
    out: dict[str, Any] = {name: {} for name in clusters}
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in clusters}
    steps: list[tuple[str, int | None]] = [
        (name, None) for _ in range(plan.repeat) for name in chosen if name != "idle"]
    if "idle" in chosen:
        steps += [("idle", peers) for peers in plan.idle_counts]
    for scenario, peers in steps:
        for system, cluster in clusters.items():
            started = time.monotonic()
            key = scenario if peers is None else f"idle{peers}"
            if peers is None:
                figures = quiet_round(partial(scenarios.SCENARIOS[scenario], cluster, plan),
                                      plan, f"{system} {key}")
            else:
                figures = scenarios.idle(cluster, plan, peers)
            rounds[system].setdefault(key, []).append(figures)
            out[system][key] = median_figures(rounds[system][key])
            log(f"  {system:8} {key:9} {time.monotonic() - started:5.1f}s {brief(figures)}")
    for system in clusters:
        out[system]["rounds"] = rounds[system]
    return out


def quiet_round(run: Callable[[], dict[str, Any]], plan: Plan, what: str) -> dict[str, Any]:
    """Run a timed round; run it again (up to `plan.retries` times) while other work on
    this shared machine took more than `plan.max_foreign` of the cores during it."""
    for attempt in range(plan.retries + 1):
        figures = run()
        foreign = figures.get("machine_busy_all", 0.0) - figures.get("machine_busy", 0.0)
        figures["other_load"] = round(foreign, 3)
        figures["attempts"] = attempt + 1
        if foreign <= plan.max_foreign:
            break
        again = "round repeated" if attempt < plan.retries else "kept (no tries left)"
        log(f"  {what}: other work used {foreign:.0%} of the cores, {again}")
    return figures


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per number, the median over rounds; anything else from the last round."""
    merged = dict(runs[-1])
    for key, value in runs[-1].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in runs)
    return merged


def brief(figures: dict[str, Any]) -> str:
    keys = ("delivered_per_s", "p50_ms", "p99_ms", "cpu_us_per_msg", "kb_per_conn")
    return " ".join(f"{k}={figures[k]}" for k in keys if k in figures)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    systems = args.systems.split(",")
    chosen = args.scenarios.split(",")
    node_env = dict(item.split("=", 1) for item in args.node_env)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc: dict[str, Any] = {"started": stamp, "plan": asdict(plan), "systems": systems,
                           "machine": report.machine(), "node_env": node_env, "results": {},
                           "loadavg_start": os.getloadavg()}
    status = 0
    clusters: dict[str, Cluster] = {}
    try:
        for name in systems:
            log(f"{name}: starting two nodes and redis-server")
            clusters[name] = Cluster(system_spec(name, node_env)).start()
        doc["results"] = run_all(clusters, plan, chosen)
    except BenchFailure as exc:
        log(f"FAILED: {exc}")
        doc["failure"] = str(exc)
        status = 1
    finally:
        for cluster in clusters.values():
            cluster.stop()
    doc["loadavg_end"] = os.getloadavg()
    write(doc, systems, args, stamp)
    return status


def write(doc: dict[str, Any], systems: list[str], args: argparse.Namespace, stamp: str) -> None:
    results = doc["results"]
    text = report.table(results, systems)
    if "ours" in systems and len(systems) > 1:
        text += "\n\n" + report.target_table(results)
    text += "\n\n" + report.noise(doc)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"bench-{stamp}"
    (base.with_suffix(".json")).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    (base.with_suffix(".md")).write_text(text + "\n")
    if not args.no_chart and results:
        report.chart(results, systems, base.with_suffix(".png"))
    log(f"wrote {base}.json, .md" + ("" if args.no_chart else ", .png"))


if __name__ == "__main__":
    raise SystemExit(main())
