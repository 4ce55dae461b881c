"""The suite leaves nothing behind, however it was launched.

One temporary directory holds everything the tests and their children write (TMPDIR points
there, so node logs, nginx prefixes, Redis Cluster dirs, pytest's tmp_path, Chromium's
profile and PulseAudio's socket land in it), and it is removed at the end. Every process
the suite starts inherits a marker in its environment; at the end any that is still alive,
daemonised or not, is sent SIGTERM, then SIGKILL, and named in the summary.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

MARK = "SIGNALING_TEST_SESSION"


def start() -> Path:
    """Make the session's directory and marker; children started from here on get both."""
    root = Path(tempfile.mkdtemp(prefix="signaling-tests-"))
    root.chmod(0o755)  # nginx's workers drop root privileges and must still reach it
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    os.environ[MARK] = secrets.token_hex(8)
    return root


def marked_processes() -> list[int]:
    """Live processes (other than this one) that carry this session's marker."""
    needle = f"{MARK}={os.environ.get(MARK, '-')}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmd = "?"
    return f"{pid} {cmd[:120]}"


def reap(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM (a signal every child handles), then SIGKILL for those that stay."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            _collect()
            time.sleep(0.05)
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _collect() -> None:
    """Reap our own zombie children, so they do not count as alive."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def finish(root: Path) -> None:
    """Stop every leftover process and remove the directory."""
    reap(marked_processes())
    shutil.rmtree(root, ignore_errors=True)
