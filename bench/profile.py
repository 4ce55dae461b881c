"""`python -m bench.profile`: sample node 0 of this project with py-spy under relay load.

Writes py-spy's collapsed stacks to bench/results/profile-<stamp>.txt and prints the
functions with the most samples, by own time (the frame on top of the stack) and by total
time (anywhere on the stack). The measured figures of a profiled run are not comparable
with an unprofiled one (py-spy takes CPU of its own), so they are only printed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench import scenarios
from bench.runner import Plan
from bench.systems import ROOT, Cluster, system_spec


def top(collapsed: Path, count: int = 25) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        weight = int(n)
        samples += weight
        own[_short(frames[-1])] += weight
        for frame in {_short(f) for f in frames}:
            total[frame] += weight
    lines = [f"{samples} samples", "", "own time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(count)]
    lines += ["", "total time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(count)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: lines vary, functions do not."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if "site-packages" in path or "app" in parts else parts[-1]
    return f"{name} ({short})"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--scenario", default="relay", choices=["relay", "max", "chat"])
    p.add_argument("--system", default="ours", help="ours, or ours@TREE (another checkout)")
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--native", action="store_true", help="include C frames (uvloop, orjson)")
    args = p.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    plan = replace(Plan(), rate=args.rate, relay_seconds=args.seconds, max_seconds=args.seconds,
                   chat_seconds=args.seconds)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    collapsed = out / f"profile-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.txt"
    node_env = dict(item.split("=", 1) for item in args.node_env)
    cluster = Cluster(system_spec(args.system, node_env)).start()
    try:
        # --native needs to stop the process for each sample; without it py-spy reads
        # memory while the node runs (--nonblocking), which skews it least
        mode = ["--native"] if args.native else ["--nonblocking"]
        spy = subprocess.Popen([py_spy, "record", "--pid", str(cluster.pids()["node0"]),
                                "--format", "raw", "--output", str(collapsed), *mode,
                                "--rate", "250", "--duration", str(int(args.seconds + 3))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        figures = scenarios.SCENARIOS[args.scenario](cluster, plan)
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            print(err.decode(), file=sys.stderr)
            return 1
    finally:
        cluster.stop()
    print({k: v for k, v in figures.items() if k != "cpu_s"})
    print(top(collapsed))
    print(f"collapsed stacks: {collapsed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
