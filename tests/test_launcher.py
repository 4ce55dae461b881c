"""`python -m deploy.local`: the whole topology from one command, and nothing left after."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from signaling_client.client import SignalingClient

import deploy.local
from deploy.children import LaunchError, port_free
from tests.support.peers import barrier
from tests.support.procs import ROOT, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) for every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(command name)"
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendants(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below `root`: a pid alone could be reused."""
    table = process_table()
    found: set[tuple[int, str]] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent:
                found.add((pid, start))
                frontier.append(pid)
    return found


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


class Output:
    """The launcher's merged output, read on a thread as it arrives."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in list(self.lines) if (m := re.search(pattern, line))]

    def join(self) -> str:
        self._thread.join(10)
        return "\n".join(self.lines)

    def close(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        self._thread.join(10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def launcher() -> Iterator[tuple[subprocess.Popen[str], Output, int]]:
    """`python -m deploy.local --nodes 2`, started as a user would, ready to serve."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.local", "--nodes", "2", "--port", str(port),
         "--redis-port", "0", "--node-port", "0"],
        cwd=ROOT, env={**os.environ, "LOG_FORMAT": "console"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = Output(proc)
    try:
        wait_until(lambda: out.find(r"cluster ready: (\S+)") or proc.poll() is not None, 30,
                   "the launcher to print its URL")
        assert proc.poll() is None, out.join()
        yield proc, out, port
    finally:
        out.close(proc)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
async def test_launcher_runs_the_whole_topology_and_stops_it_leaving_nothing(
    launcher: tuple[subprocess.Popen[str], Output, int], stop: str,
) -> None:
    proc, out, port = launcher
    url = out.find(r"cluster ready: (\S+)")[0][1]
    assert url == f"http://127.0.0.1:{port}"
    children = descendants(proc.pid)
    ports = [port, *(int(m[1]) for m in out.find(r"^local +\| (?:node-\d|redis) +\S+:(\d+)"))]
    assert len(ports) == 4, out.lines  # nginx, two nodes, redis
    async with aiohttp.ClientSession() as session:
        clients = [await SignalingClient.connect(url, "room", f"p{i}", session=session)
                   for i in range(4)]
        assert {c.node for c in clients} == {"local-1", "local-2"}
        await barrier(clients)
        for c in clients:
            await c.close()
    if stop == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends its foreground group
    else:
        proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    text = await asyncio.to_thread(out.join)
    table = process_table()
    assert not [c for c in children if table.get(c[0], (0, ""))[1] == c[1]], "left running"
    # nginx master and workers, two nodes, redis: all were there, all are gone.
    assert len(children) >= 5
    assert all(refuses(p) for p in ports)
    for label in ("redis", "node-1", "node-2", "nginx"):
        assert re.search(rf"^{label} +\| ", text, re.M), label
    assert re.search(r'^nginx +\| \{.*"uri":"/ws/room/p0"', text, re.M)  # its JSON access log
    assert text.rstrip().endswith("stopped")
    # Nodes drain while the reaper still runs; nginx and Redis go last.
    order = [m[1] for m in re.finditer(r"^(\S+) +\| exited with code", text, re.M)]
    assert order.index("node-1") < order.index("reaper") < order.index("nginx") \
        < order.index("redis"), order
    redis_port = int(out.find(r"^local +\| redis +REDIS_URL=\S+:(\d+)/0")[0][1])
    assert f"inspect it with: redis-cli -p {redis_port}" in text
    for module, needs in deploy.local.WORKERS:  # started when it exists and is configured
        label = module.rsplit(".", 1)[-1]
        said = (f"{label}: module {module} not found, not started"
                if not importlib.util.find_spec(module)
                else f"{label}: {needs} is not set, not started" if needs
                else f"{label}: started (python -m {module})")
        assert f"| {said}\n" in text


async def test_even_kill_9_of_the_launcher_leaves_no_process_behind(
    launcher: tuple[subprocess.Popen[str], Output, int],
) -> None:
    proc, out, _ = launcher
    children = descendants(proc.pid)
    tmp = Path(out.find(r"\(config (/\S+)/nginx/nginx\.conf\)")[0][1])
    proc.kill()  # no clean-up runs: each child gets SIGTERM from the kernel instead

    def all_gone() -> bool:
        table = process_table()
        return not [c for c in children if table.get(c[0], (0, ""))[1] == c[1]]
    await asyncio.to_thread(wait_until, all_gone, 20, "the launcher's children to exit")
    shutil.rmtree(tmp)  # the one thing a killed launcher cannot remove


def test_a_taken_redis_port_is_named_with_what_to_do_and_nothing_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "deploy.local", "--nodes", "1", "--port", "0",
             "--node-port", "0", "--redis-port", str(port)],
            cwd=ROOT, timeout=30, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: port {port} is taken" in done.stdout
    assert "--redis-port 0" in done.stdout
    assert "node-1" not in done.stdout  # nothing else was started


def test_the_default_redis_port_is_the_one_the_docs_use() -> None:
    args = deploy.local.parse_args([])
    assert (args.port, args.node_port, args.redis_port) == (8080, 3001, 6390)
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert any("redis-cli -p 6390" in p.read_text() for p in docs)


def test_launcher_names_the_debian_package_of_a_missing_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    done = subprocess.run([sys.executable, "-m", "deploy.local"], cwd=ROOT, timeout=20,
                          env={**os.environ, "PATH": str(tmp_path)}, capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert "redis-server not found" in done.stderr
    assert "apt-get install redis-server" in done.stderr
    # nginx, which Debian puts in /usr/sbin: with redis-server found but no nginx anywhere.
    (tmp_path / "redis-server").symlink_to("/bin/true")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(deploy.local, "SYSTEM_DIRS", str(tmp_path))
    with pytest.raises(LaunchError, match=r"nginx not found: .*apt-get install nginx-light"):
        deploy.local.find_programs(need_redis=True)


def test_a_port_whose_last_connections_linger_in_time_wait_counts_as_free() -> None:
    """Starting the launcher again right after a run: the run's closed connections sit in
    TIME_WAIT on its ports, which no server minds (SO_REUSEADDR); the check must not."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    listener.close()
    assert port_free(port)
    with socket.socket() as busy:  # and a port with a listener is still taken
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert not port_free(busy.getsockname()[1])
