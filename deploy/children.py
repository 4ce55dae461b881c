"""Child processes of the local launcher: started, watched, labelled and stopped.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the launcher,
which then stops the children in an order of its choosing; on Linux each child also gets
SIGTERM if the launcher itself dies, so even `kill -9` of the launcher leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

Probe = Callable[[], Awaitable[bool]]

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class LaunchError(RuntimeError):
    """The topology cannot start; the message says why and what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now. Servers (nginx, the nodes,
    redis-server) set SO_REUSEADDR, so connections of a run that just ended, still in
    TIME_WAIT on that port, do not stop them; nor do they stop this check."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Console:
    """Merged output: every line prefixed with the label of the process that wrote it."""

    width: int = 6

    def say(self, label: str, text: str) -> None:
        sys.stdout.write(f"{label:<{self.width}} | {text}\n")
        sys.stdout.flush()


@dataclass
class Child:
    label: str
    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None]

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL to the whole process group if it does not exit in time."""
        if self.running:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        await self.pump

    def kill(self) -> None:
        if self.running:
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        # The child leads its own process group (its own session): nginx's workers too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the launcher goes away."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def spawn(console: Console, label: str, argv: Sequence[str],
                env: Mapping[str, str] | None = None) -> Child:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=None if env is None else dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True, preexec_fn=_die_with_parent, limit=1 << 20)
    return Child(label, proc, asyncio.create_task(_pump(console, label, proc)))


async def _pump(console: Console, label: str, proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while True:
        try:
            line = await proc.stdout.readline()
        except ValueError:  # a line longer than the limit: show what there is
            line = await proc.stdout.read(1 << 20)
        if not line:
            break
        console.say(label, line.decode(errors="replace").rstrip("\n"))
    code = await proc.wait()
    console.say(label, f"exited with code {code}")


async def wait_ready(child: Child, probe: Probe, timeout: float) -> None:
    """Poll `probe` until it says the child is up; fail if the child exits first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if not child.running:
            raise LaunchError(f"{child.label} exited with code {child.proc.returncode} "
                              "while starting (its output is above)")
        if await probe():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise LaunchError(f"{child.label} not ready after {timeout:.0f} s")
        await asyncio.sleep(0.05)  # start-up poll, not synchronisation between peers


def http_ok(session: aiohttp.ClientSession, url: str) -> Probe:
    async def probe() -> bool:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
    return probe


def redis_pong(port: int) -> Probe:
    async def probe() -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            return (await asyncio.wait_for(reader.readline(), 1)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
    return probe
