"""The run's table (stdout and Markdown), JSON file and PNG chart, with the issue's targets."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OURS, NODE, PY, GO, WS = "ours", "sio-node", "pysio", "go", "ws-node"
LABELS = {OURS: "this project", NODE: "socket.io (Node)", PY: "python-socketio",
          GO: "Go gorilla+redigo", WS: "Node ws+ioredis"}
PEERS = (NODE, GO, WS)  # the peers the goals are set against (python-socketio is slower)


@dataclass(frozen=True)
class Metric:
    scenario: str
    key: str
    title: str
    unit: str
    better: str  # "lower" or "higher"


METRICS = [
    Metric("relay", "p50_ms", "relay @ fixed rate: latency p50", "ms", "lower"),
    Metric("relay", "p99_ms", "relay @ fixed rate: latency p99", "ms", "lower"),
    Metric("relay", "max_ms", "relay @ fixed rate: latency max", "ms", "lower"),
    Metric("relay", "cpu_us_per_msg", "relay @ fixed rate: CPU per message", "µs", "lower"),
    Metric("max", "delivered_per_s", "relay, max throughput", "msg/s", "higher"),
    Metric("max", "cpu_us_per_msg", "relay, max throughput: CPU per message", "µs", "lower"),
    Metric("chat", "p99_ms", "chat fan-out (rooms of 8): latency p99", "ms", "lower"),
    Metric("chat", "cpu_us_per_msg", "chat fan-out: CPU per delivery", "µs", "lower"),
    Metric("join", "p50_ms", "join (connect to welcome): p50", "ms", "lower"),
    Metric("join", "p99_ms", "join (connect to welcome): p99", "ms", "lower"),
    Metric("idle2000", "kb_per_conn", "idle memory, 2,000 peers", "KB/conn", "lower"),
    Metric("idle10000", "kb_per_conn", "idle memory, 10,000 peers", "KB/conn", "lower"),
]


def value(results: dict[str, Any], system: str, m: Metric) -> float | None:
    got = results.get(system, {}).get(m.scenario, {}).get(m.key)
    return float(got) if isinstance(got, int | float) else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """The goals: (what, measured, met), each against the peers measured in this run."""
    def v(system: str, scenario: str, key: str) -> float | None:
        return value(results, system, Metric(scenario, key, "", "", ""))

    out: list[tuple[str, str, bool | None]] = []

    def check(what: str, r: float | None, ok: bool | None, fmt: str = "{:.2f}x") -> None:
        out.append((what, "n/a" if r is None else fmt.format(r), ok))

    def against(scenario: str, key: str, best: Any) -> tuple[float | None, str]:
        """Our figure as a ratio of the best peer's (`best`: min or max), and its name."""
        got = {p: x for p in PEERS if (x := v(p, scenario, key)) is not None}
        if not got:
            return None, "peers"
        peer = best(got, key=got.__getitem__)
        return ratio(v(OURS, scenario, key), got[peer]), LABELS[peer]

    r, who = against("relay", "cpu_us_per_msg", min)
    check(f"relay CPU/msg at 2000 msg/s <= the best peer's ({who})", r,
          None if r is None else r <= 1)
    r = ratio(v(OURS, "relay", "cpu_us_per_msg"), v(NODE, "relay", "cpu_us_per_msg"))
    check("relay CPU/msg at 2000 msg/s <= 0.8x socket.io", r, None if r is None else r <= 0.8)
    r, who = against("relay", "p99_ms", min)
    check(f"relay p99 at 2000 msg/s <= every peer's ({who})", r, None if r is None else r <= 1)
    r, who = against("max", "delivered_per_s", max)
    check(f"max relay rate >= 1.2x the best peer's ({who})", r,
          None if r is None else r >= 1.2)
    r, who = against("chat", "p99_ms", min)
    check(f"chat fan-out p99 <= every peer's ({who})", r, None if r is None else r <= 1)
    kb = v(OURS, "idle10000", "kb_per_conn") or v(OURS, "idle2000", "kb_per_conn")
    check("idle memory <= 12 KB per connection", kb, None if kb is None else kb <= 12,
          "{:.1f} KB")
    n = v(OURS, "idle10000", "peers")
    check("10,000 idle peers on one node", n, None if n is None else n >= 10000, "{:.0f}")
    return out


def fmt(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def table(results: dict[str, Any], systems: list[str]) -> str:
    """A Markdown table: one row per figure, each system, and ours as a ratio of each peer."""
    peers = [s for s in systems if s != OURS]
    head = ["figure", "unit", *[LABELS.get(s, s) for s in systems],
            *[f"this / {LABELS.get(p, p)}" for p in peers if OURS in systems]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in METRICS:
        vals = [value(results, s, m) for s in systems]
        if all(x is None for x in vals):
            continue
        ratios = [ratio(value(results, OURS, m), value(results, p, m)) for p in peers] \
            if OURS in systems else []
        cells = [m.title, m.unit, *map(fmt, vals),
                 *[("-" if r is None else f"{r:.2f}x") for r in ratios]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_table(results: dict[str, Any]) -> str:
    rows = ["| target | measured | met |", "|---|---|---|"]
    for what, measured, ok in targets(results):
        rows.append(f"| {what} | {measured} | {'n/a' if ok is None else 'yes' if ok else 'NO'} |")
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "node": node, "kernel": platform.release(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def short_label(system: str) -> str:
    """A chart's x label: "ours@TREE" (a before/after run) reads as "before"."""
    return "before" if system.startswith(f"{OURS}@") else LABELS.get(system, system)


def chart(results: dict[str, Any], systems: list[str], path: Path) -> None:
    """One small bar chart per headline figure, the systems side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if m.key != "max_ms" and m.key != "p50_ms"
             and any(value(results, s, m) is not None for s in systems)]
    cols = 3
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    colors = {OURS: "#2a9d8f", NODE: "#e9c46a", PY: "#e76f51", GO: "#457b9d", WS: "#8d99ae"}
    for ax, m in zip(axes.flat, shown, strict=False):
        vals = [value(results, s, m) or 0.0 for s in systems]
        bars = ax.bar([short_label(s) for s in systems], vals,
                      color=[colors.get(s, "grey") for s in systems])
        ax.bar_label(bars, labels=[fmt(x) for x in vals], fontsize=8)
        ax.set_title(f"{m.title}\n({m.unit}, {m.better} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8, labelrotation=30)
        ax.margins(y=0.2)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def noise(doc: dict[str, Any]) -> str:
    """How busy the machine was: this benchmark's processes, and everything on it."""
    own, every, repeated, noisy = [], [], 0, 0
    for system in doc["results"].values():
        for runs in system.get("rounds", {}).values():
            for r in runs:
                if r.get("machine_busy_all") is not None:
                    own.append(r["machine_busy"])
                    every.append(r["machine_busy_all"])
                    repeated += r.get("attempts", 1) - 1
                    noisy += r.get("other_load", 0) > doc["plan"]["max_foreign"]
    m = doc["machine"]
    load = " / ".join(f"{x:.1f}" for x in doc.get("loadavg_start", ())[:1]
                      + doc.get("loadavg_end", ())[:1])
    text = (f"Machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, "
            f"Node.js {m['node']}; load average at start / end {load}.")
    if every:
        text += (f" During timed rounds the cores were {100 * statistics.median(every):.0f}% "
                 f"busy (median), {100 * statistics.median(own):.0f}% from the benchmark's "
                 "own nodes, redis-servers and generators: the rest is other work. "
                 f"{repeated} rounds were repeated because other work took over "
                 f"{100 * doc['plan']['max_foreign']:.0f}% of the cores; {noisy} kept that "
                 "much after the last try.")
    return text
