"""Runs one scenario against one cluster: generator processes, CPU and memory sampling.

The coordinator (this process) reads /proc around the measured phase only: the
generators first connect their peers and say `ready`, the coordinator samples CPU times,
says `go`, waits for every `done`, and samples again. Set-up and tear-down are outside
the window, and the generators' own CPU is reported separately, never counted.
"""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench import procstat
from bench.systems import ROOT, Cluster


class BenchFailure(RuntimeError):
    """A delivery check failed, or a process misbehaved: the run must not be trusted."""


@dataclass(frozen=True)
class Plan:
    """Every knob of one run; `quick()` is the smoke-test size."""

    rate: int = 2000  # relay frames per second, fixed-rate scenario
    rooms: int = 50
    relay_seconds: float = 10.0
    max_seconds: float = 8.0
    window: int = 8  # frames in flight per sender, max-throughput scenario
    chat_rooms: int = 25
    chat_size: int = 8
    chat_rate: int = 250  # chats per second (x8 deliveries)
    chat_seconds: float = 10.0
    join_pairs: int = 500
    join_parallel: int = 10
    idle_counts: tuple[int, ...] = (2000, 10000)
    gens: int = 2
    repeat: int = 3  # rounds of each timed scenario; figures are medians
    max_foreign: float = 0.25  # a round during which other work took more of the cores...
    retries: int = 2  # ...is run again, at most this many times

    @classmethod
    def quick(cls) -> Plan:
        return cls(relay_seconds=4.0, max_seconds=3.0, chat_seconds=3.0, join_pairs=100,
                   idle_counts=(2000,), repeat=1, retries=0)


@dataclass
class GenRun:
    results: list[dict[str, Any]]
    cpu: dict[str, float]  # measured processes' CPU seconds during the phase
    gen_cpu: float
    wall: float
    extra: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[Cluster], dict[str, Any]]


def run_gens(cluster: Cluster, specs: list[dict[str, Any]], after_ready: Hook | None = None,
             timeout: float = 300.0) -> GenRun:
    """Start one generator per spec, run the measured phase, check delivery."""
    deadline = time.monotonic() + timeout
    procs = [_spawn(spec) for spec in specs]
    try:
        for proc in procs:
            _expect(proc, "ready", deadline)
        extra = after_ready(cluster) if after_ready else {}
        pids = cluster.pids()
        gen_pids = {f"gen{i}": p.pid for i, p in enumerate(procs)}
        before, gen_before = procstat.cpu_many(pids), procstat.cpu_many(gen_pids)
        ticks = procstat.machine_ticks()
        start = time.monotonic()
        for proc in procs:
            _say(proc, "go")
        results = [_expect(proc, "done", deadline)["result"] for proc in procs]
        wall = time.monotonic() - start
        busy, total = (b - a for a, b in zip(ticks, procstat.machine_ticks(), strict=True))
        extra["machine_busy_all"] = round(busy / max(1, total), 3)
        cpu = procstat.delta(before, procstat.cpu_many(pids))
        gen_cpu = procstat.total(procstat.delta(gen_before, procstat.cpu_many(gen_pids)).values())
        for proc in procs:
            _say(proc, "exit")
        for proc in procs:
            proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
    errors = [e for r in results for e in r["errors"]]
    if errors:
        count = sum(r["error_count"] for r in results)
        raise BenchFailure(f"{cluster.spec.name}: {count} delivery errors, first: "
                           + "; ".join(errors[:5]))
    return GenRun(results, cpu, gen_cpu, wall, extra)


def _spawn(spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.gen", orjson.dumps(spec).decode()],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _say(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(word + "\n")
    proc.stdin.flush()


def _expect(proc: subprocess.Popen[str], event: str, deadline: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise BenchFailure(f"generator {proc.pid} did not report {event!r} in time")
    line = proc.stdout.readline()
    if not line:
        raise BenchFailure(f"generator {proc.pid} exited ({proc.wait()}) before {event!r}")
    message: dict[str, Any] = orjson.loads(line)
    if message.get("event") != event:
        raise BenchFailure(f"generator {proc.pid}: expected {event!r}, got {line[:500]}")
    if message.get("errors"):
        raise BenchFailure(f"generator {proc.pid} set-up: {message['errors'][:5]}")
    return message


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def base_spec(cluster: Cluster, scenario: str, gen: int) -> dict[str, Any]:
    return {"system": cluster.spec.name, "urls": cluster.urls, "scenario": scenario,
            "prefix": f"{scenario}{secrets.token_hex(3)}g{gen}-"}
