"""Every command in the README and docs/ runs as written; every link stays in the repository.

The commands are written for `./scripts/serve --cluster` (nginx on 8080, nodes on
3001-3003, Redis on 6390). Here `python -m deploy.local` runs on free ports, written in
place of those, with peers alice and bob in room `demo`, as a reader with the demo page
open would have. Each `sh` block runs with `bash -e` from the repository root; a block
preceded by `<!-- not run: why -->` is one that starts the service, runs until Ctrl-C or
needs what this machine lacks (Docker, Kubernetes), and is only checked to say why.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from signaling_client.client import SignalingClient

from tests.support.procs import ROOT, free_port
from tests.support.wait import wait_until
from tests.test_launcher import Output

pytestmark = pytest.mark.integration

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")
ADMIN_TOKEN = "doc-commands-admin-token-0123456789abcdef"
AUTH_SECRET = "doc-commands-auth-secret-0123456789abcdef"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            reason = NOT_RUN.search(before)
            found.append(Block(page, text.count("\n", 0, m.start()) + 1, m[1], m[2],
                               reason[1] if reason else None))
    return found


SHELL = [b for b in blocks() if b.lang == "sh"]
RUN = [b for b in SHELL if b.not_run is None]


@dataclass
class Site:
    ports: dict[str, int]  # the documented port -> this run's

    def rewrite(self, command: str) -> str:
        for documented, port in self.ports.items():
            command = re.sub(rf"(?<![\d.]){documented}(?!\d)", str(port), command)
        return command.replace(".venv/bin/python", sys.executable)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    ports = {"8080": free_port(), "6390": free_port()}
    env = {**os.environ, "ADMIN_TOKEN": ADMIN_TOKEN, "LOG_FORMAT": "console"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.local", "--nodes", "3", "--port", str(ports["8080"]),
         "--redis-port", str(ports["6390"]), "--node-port", "0"],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    out = Output(proc)
    try:
        wait_until(lambda: out.find(r"cluster ready: ") or proc.poll() is not None, 30,
                   "the launcher to be ready")
        assert proc.poll() is None, out.join()
        for i, port in enumerate(m[1] for m in out.find(r"^local +\| node-\d (\S+:\d+) ")):
            ports[str(3001 + i)] = int(port.rsplit(":", 1)[1])
        yield Site(ports)
    finally:
        out.close(proc)


@pytest.fixture
async def demo_room(site: Site) -> AsyncIterator[list[SignalingClient]]:
    """alice and bob in room demo through nginx, as with the page open in two tabs."""
    url = f"http://127.0.0.1:{site.ports['8080']}"
    peers = [await SignalingClient.connect(url, "demo", name) for name in ("alice", "bob")]
    yield peers
    for peer in peers:
        await peer.close()


def test_commands_are_found_and_every_skipped_one_says_why() -> None:
    assert len(RUN) >= 10, [b.name for b in RUN]
    for block in SHELL:
        assert block.not_run is None or len(block.not_run) > 10, block.name
    # Commands live in sh blocks, so none hides in an indented block where nothing runs it.
    for page in PAGES:
        prose = FENCE.sub("", page.read_text())
        indented = re.findall(r"\n\n((?: {4}\S.*\n)+)", prose)
        assert not indented, (page.name, indented[:1])


@pytest.mark.parametrize("block", RUN, ids=[b.name for b in RUN])
async def test_documented_command_runs_as_written(
    site: Site, demo_room: list[SignalingClient], block: Block
) -> None:
    env = {**os.environ, "ADMIN_TOKEN": ADMIN_TOKEN, "AUTH_SECRET": AUTH_SECRET}
    env.pop("REDIS_URL", None)
    # On a thread: the peers' loop keeps answering while the command runs.
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-e", "-c", site.rewrite(block.text)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    shown = f"{block.name}:\n{block.text}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, shown
    assert done.stdout.strip(), shown
    assert not re.search(r"^(\(error\)|ERR )", done.stdout, re.M), shown


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|<(https?://[^>]+)>")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    for m in LINK.finditer(FENCE.sub("", page.read_text())):
        target = m[1] or m[2]
        if target.startswith(("http://127.0.0.1", "http://localhost")):
            continue  # the running service
        if re.match(r"https?://", target):
            assert "shared/CONTRACT" not in target, target
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: no heading for {target}"
