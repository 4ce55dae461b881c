"""Real processes for tests: redis-server and signaling nodes on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.wait import ready_status, wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Teardown for any child: SIGTERM, which every process we start handles (nodes drain,
    redis-server and the workers exit), then SIGKILL if it is still there after `grace`.
    Never raises, so a teardown always goes on to the next process."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class RedisServer:
    """A private redis-server (never the machine's 6379), killable and restartable."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, f"redis-server on {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would: for tests of what happens when Redis dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        terminate(self.proc)

    def restart(self) -> RedisServer:
        """Start again on the same port, empty (nothing is persisted)."""
        self.kill()
        return self.start()

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", *args],
                             capture_output=True, text=True, check=True)
        return out.stdout


@dataclass
class NodeProcess:
    """`python -m app` as users run it, configured through the environment."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    argv: list[str] = field(default_factory=lambda: [sys.executable, "-m", "app"])
    cwd: Path = ROOT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> NodeProcess:
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_FORMAT": "json",
               "LOG_LEVEL": "info", "DRAIN_SECONDS": "0.2", **self.env}
        fd, name = tempfile.mkstemp(prefix="node-", suffix=".log")
        self.log_path = Path(name)
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=fd, stderr=fd)
        os.close(fd)
        if wait_ready:
            wait_until(self.is_ready, 15, f"node on {self.port} to be ready")
        return self

    def is_ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.logs()}")
        return ready_status(self.url) == 200

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then wait; SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """kill -9, as a crash would: no drain, no clean-up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Teardown: SIGTERM (the node drains), SIGKILL if it lingers."""
        terminate(self.proc)
