"""A real nginx (Debian's nginx-light) running the repository's nginx.conf on free ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.nginx_conf import LocalNginx, render
from tests.support.procs import free_port
from tests.support.wait import wait_until


def nginx_binary() -> str:
    exe = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if exe is None:
        raise RuntimeError("nginx not found: apt-get install nginx-light (./scripts/test does)")
    return exe


@dataclass
class NginxProcess:
    """nginx in front of `node_ports`, its prefix (config, pid, temp) in a private dir."""

    node_ports: Sequence[int]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    prefix: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nginx-test-")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "stdout.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "stderr.log"

    def config(self) -> Path:
        self.prefix.chmod(0o755)  # nginx's workers drop root and need their temp paths
        conf = self.prefix / "nginx.conf"
        conf.write_text(render(LocalNginx(self.port, self.node_ports, self.prefix)))
        return conf

    def start(self) -> NginxProcess:
        conf = self.config()
        with self.access_log.open("ab") as out, self.error_log.open("ab") as err:
            self.proc = subprocess.Popen(
                [nginx_binary(), "-p", f"{self.prefix}/", "-c", str(conf), "-e", "stderr",
                 "-g", "daemon off;"], stdout=out, stderr=err, start_new_session=True)
        wait_until(self._healthy, 10, f"nginx on {self.port}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {self.error_log.read_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/nginx-health", timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def access_entries(self) -> list[dict[str, Any]]:
        """The JSON access log so far, one object per finished request."""
        lines = self.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the master and its workers
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)
