"""`python -m deploy.local --nodes 3`: the production topology on one machine, no Docker.

redis-server (on port 6390, which the recipes in README and docs/ use; `--redis-port 0`
picks a free one, `--redis-url` uses yours), N nodes (`python -m app`), the workers, and
nginx rendered from the repository's `nginx.conf` for local ports, each a child process
whose output is shown line by line behind its label. Ctrl-C or SIGTERM stops everything (a
second one stops it at once): the nodes first, so their peers get 1001 through nginx while
the reaper still runs, then the workers, then nginx, then Redis; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import aiohttp
from dotenv import load_dotenv

from deploy.children import (
    Child,
    Console,
    LaunchError,
    free_port,
    http_ok,
    port_free,
    redis_pong,
    spawn,
    wait_ready,
)
from deploy.nginx_conf import LocalNginx, render

# Workers run beside the nodes, each `python -m NAME`, with the variable they need (None:
# always); one whose module does not exist, or whose variable is unset, is skipped with a
# notice. The webhook worker runs when WEBHOOK_URL is set (with WEBHOOK_SECRET), and then
# the nodes write room events for it (WEBHOOK_EVENTS=1).
WORKERS: tuple[tuple[str, str | None], ...] = (
    ("workers.reaper", None),
    ("workers.webhooks", "WEBHOOK_URL"),
)

# The Debian package that brings each program, named when the program is missing.
DEBIAN_PACKAGES = {"redis-server": "redis-server", "nginx": "nginx-light"}
# Debian installs nginx in /usr/sbin, which is not on a normal user's PATH.
SYSTEM_DIRS = "/usr/sbin:/sbin"

# Not Redis's 6379, which a machine often runs already; the docs' redis-cli lines use it.
REDIS_PORT = 6390
# Nodes on 3001, 3002, ...: the port of a single `./scripts/serve`, so recipes name node-1.
NODE_PORT = 3001
START_TIMEOUT = 20.0
# A draining node exits within DRAIN_SECONDS + 5 s (10 s by default); then SIGKILL.
STOP_TIMEOUT = 15.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--port", type=int, default=8080,
                   help="nginx's port on 127.0.0.1 (default 8080; 0 picks a free one)")
    p.add_argument("--redis-port", type=int, default=REDIS_PORT,
                   help=f"port of the redis-server it starts (default {REDIS_PORT}; 0 picks "
                        "a free one)")
    p.add_argument("--node-port", type=int, default=NODE_PORT,
                   help=f"port of node-1, the others follow (default {NODE_PORT}; 0 picks free "
                        "ones)")
    p.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    p.add_argument("--key-prefix", default=None, help="KEY_PREFIX for nodes and workers")
    args = p.parse_args(argv)
    if args.nodes < 1:
        p.error("--nodes must be at least 1")
    return args


def find_programs(need_redis: bool) -> dict[str, str]:
    """Path of each program the topology needs, or a LaunchError naming the Debian package."""
    found: dict[str, str] = {}
    for name in ("redis-server", "nginx") if need_redis else ("nginx",):
        path = shutil.which(name) or shutil.which(name, path=SYSTEM_DIRS)
        if path is None:
            package = DEBIAN_PACKAGES[name]
            raise LaunchError(f"{name} not found: install the Debian package {package} "
                              f"(sudo apt-get install {package})")
        found[name] = path
    return found


def node_env(index: int, port: int, redis_url: str, key_prefix: str, public_port: int,
             base: Mapping[str, str]) -> dict[str, str]:
    """Environment of node `index`: the user's, with what the topology decides on top."""
    env = dict(base)
    env.update(HOST="127.0.0.1", PORT=str(port), NODE_ID=f"local-{index}",
               REDIS_URL=redis_url, KEY_PREFIX=key_prefix,
               # nginx reaches the nodes from loopback: believe its X-Forwarded-For.
               TRUSTED_PROXIES="127.0.0.1")
    # A page served through nginx has nginx's address as its origin.
    env.setdefault("ALLOWED_ORIGINS", f"http://127.0.0.1:{public_port},"
                                      f"http://localhost:{public_port},http://localhost:3000")
    env.setdefault("LOG_FORMAT", "console")
    if env.get("WEBHOOK_URL"):  # the webhook worker runs: write room events for it
        env.setdefault("WEBHOOK_EVENTS", "1")
    return env


class Topology:
    """The children, started in dependency order and stopped in reverse."""

    def __init__(self, args: argparse.Namespace, programs: Mapping[str, str],
                 console: Console) -> None:
        self.args = args
        self.programs = programs
        self.console = console
        self.tmp = Path(tempfile.mkdtemp(prefix="signaling-local-"))
        # nginx's workers drop root privileges and must still reach their temp paths.
        self.tmp.chmod(0o755)
        self.redis: list[Child] = []
        self.nodes: list[Child] = []
        self.workers: list[Child] = []
        self.nginx: list[Child] = []
        self.url = ""

    @property
    def children(self) -> list[Child]:
        return [*self.redis, *self.nodes, *self.workers, *self.nginx]

    async def start(self) -> None:
        key_prefix = self.args.key_prefix or os.environ.get("KEY_PREFIX", "sig:")
        public_port = self.args.port or free_port()
        if not port_free(public_port):
            raise LaunchError(f"port {public_port} is taken: stop what listens there, or pass "
                              "--port 0 for a free one")
        async with aiohttp.ClientSession() as session:
            redis_url = self.args.redis_url or await self._start_redis()
            ports = await self._start_nodes(session, redis_url, key_prefix, public_port)
            await self._start_workers(redis_url, key_prefix)
            await self._start_nginx(session, ports, public_port)
        self.url = f"http://127.0.0.1:{public_port}"

    async def _start_redis(self) -> str:
        port = self.args.redis_port or free_port()
        if not port_free(port):
            raise LaunchError(
                f"port {port} is taken (another ./scripts/serve --cluster, or a Redis?): stop "
                "it, or pass --redis-port 0 for a free port or --redis-url to use a running Redis")
        child = await spawn(self.console, "redis", [
            self.programs["redis-server"], "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.tmp)])
        self.redis.append(child)
        await wait_ready(child, redis_pong(port), START_TIMEOUT)
        url = f"redis://127.0.0.1:{port}/0"
        self.console.say("local", f"redis  REDIS_URL={url}  inspect it with: redis-cli -p {port}")
        return url

    async def _start_nodes(self, session: aiohttp.ClientSession, redis_url: str,
                           key_prefix: str, public_port: int) -> list[int]:
        first = self.args.node_port
        ports = ([first + i for i in range(self.args.nodes)] if first
                 else [free_port() for _ in range(self.args.nodes)])
        taken = [port for port in ports if not port_free(port)]
        if taken:
            raise LaunchError(
                f"node port(s) {', '.join(map(str, taken))} taken (a ./scripts/serve still "
                "running?): stop it, or pass --node-port 0 for free ports")
        for i, port in enumerate(ports, 1):
            env = node_env(i, port, redis_url, key_prefix, public_port, os.environ)
            self.nodes.append(await spawn(self.console, f"node-{i}",
                                          [sys.executable, "-m", "app"], env))
        for i, (child, port) in enumerate(zip(self.nodes, ports, strict=True), 1):
            url = f"http://127.0.0.1:{port}"
            await wait_ready(child, http_ok(session, f"{url}/ready"), START_TIMEOUT)
            self.console.say("local", f"node-{i} {url} (NODE_ID local-{i})")
        return ports

    async def _start_workers(self, redis_url: str, key_prefix: str) -> None:
        env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": key_prefix}
        for module, needs in WORKERS:
            label = module.rsplit(".", 1)[-1]
            if importlib.util.find_spec(module) is None:
                self.console.say("local", f"{label}: module {module} not found, not started")
                continue
            if needs is not None and not os.environ.get(needs):
                self.console.say("local", f"{label}: {needs} is not set, not started")
                continue
            self.workers.append(await spawn(self.console, label,
                                            [sys.executable, "-m", module], env))
            self.console.say("local", f"{label}: started (python -m {module})")

    async def _start_nginx(self, session: aiohttp.ClientSession, ports: list[int],
                           public_port: int) -> None:
        prefix = self.tmp / "nginx"
        prefix.mkdir(mode=0o755)
        conf = prefix / "nginx.conf"
        conf.write_text(render(LocalNginx(public_port, ports, prefix)))
        child = await spawn(self.console, "nginx", [
            self.programs["nginx"], "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr",
            "-g", "daemon off;"])
        self.nginx.append(child)
        url = f"http://127.0.0.1:{public_port}"
        await wait_ready(child, http_ok(session, f"{url}/nginx-health"), START_TIMEOUT)
        self.console.say("local", f"nginx  {url} (config {conf})")

    def exited(self) -> Child | None:
        return next((c for c in self.children if not c.running), None)

    async def wait_any_exit(self) -> Child:
        waits = [asyncio.ensure_future(c.proc.wait()) for c in self.children]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        child = self.exited()
        assert child is not None
        return child

    async def stop(self) -> None:
        # Nodes drain through nginx while the reaper can still clean up after any that dies.
        for group in (self.nodes, self.workers, self.nginx, self.redis):
            await asyncio.gather(*(c.stop(STOP_TIMEOUT) for c in group))
        shutil.rmtree(self.tmp, ignore_errors=True)

    def kill(self) -> None:
        for child in self.children:
            child.kill()


async def run(args: argparse.Namespace, programs: Mapping[str, str]) -> int:
    console = Console(width=max(6, len(f"node-{args.nodes}")))
    topology = Topology(args, programs, console)
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            topology.kill()  # second Ctrl-C: stop waiting for drains
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await _serve(topology, stop, console)
    finally:
        console.say("local", "stopping")
        await topology.stop()
        console.say("local", "stopped")


async def _serve(topology: Topology, stop: asyncio.Event, console: Console) -> int:
    starting = asyncio.create_task(topology.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return 0
        try:
            starting.result()
        except LaunchError as exc:
            console.say("local", f"error: {exc}")
            return 1
        console.say("local", f"cluster ready: {topology.url}  WebSocket: "
                             f"{topology.url.replace('http', 'ws', 1)}/ws/ROOM/PEER  "
                             "(Ctrl-C stops everything)")
        exited = asyncio.create_task(topology.wait_any_exit())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            exited.cancel()
            return 0
        child = exited.result()
        console.say("local", f"{child.label} exited unexpectedly; stopping everything")
        return 1
    finally:
        stopping.cancel()
        await asyncio.gather(starting, return_exceptions=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The nodes read .env too; loading it here lets it set what the launcher passes on.
    load_dotenv(os.environ.get("ENV_FILE", ".env"), override=False)
    try:
        programs = find_programs(need_redis=args.redis_url is None)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(asyncio.run(run(args, programs)))


if __name__ == "__main__":
    main()
