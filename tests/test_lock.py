"""Every install comes from uv.lock: a pyproject.toml the lock does not match is refused.

The install step runs on a copy of the project (pyproject.toml, uv.lock, scripts/) in a
temporary directory, with the uv this suite was installed with, so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.procs import ROOT

VENV = Path(sys.prefix)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what `scripts/install` reads (the client's project file too), and a
    virtualenv that already has uv."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    # The lock covers the workspace: the client library's project file is part of it.
    (tmp_path / "client").mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / "client" / name, tmp_path / "client" / name)
    return tmp_path


def install(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`scripts/install --venv <this suite's venv> --dry-run`: checks, installs nothing."""
    return subprocess.run(["bash", str(project / "scripts" / "install"), "--venv", str(VENV),
                           "--dry-run", *args], cwd=project, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "UV_OFFLINE": "1"})


def test_the_lock_pins_every_package_with_hashes_and_pins_uv_itself() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    for name in ("aiohttp", "redis", "msgpack", "structlog", "pytest", "fakeredis", "mypy",
                 "uv"):
        assert name in packages, name
    for p in packages.values():
        if p["source"].get("editable") in (".", "client"):  # the project, its client library
            continue
        files = [*p.get("wheels", []), *([p["sdist"]] if "sdist" in p else [])]
        assert files and all(f["hash"].startswith("sha256:") for f in files), p["name"]
    pinned = subprocess.run([sys.executable, str(ROOT / "scripts" / "uv_pin.py")],
                            capture_output=True, text=True, check=True).stdout
    assert pinned.startswith(f"uv=={packages['uv']['version']} --hash=sha256:")


def test_install_accepts_the_committed_lock(project: Path) -> None:
    done = install(project, "--extra", "test")
    assert done.returncode == 0, done.stderr


def test_install_refuses_a_pyproject_the_lock_does_not_match(project: Path) -> None:
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    assert '    "msgpack>=' in text
    pyproject.write_text(text.replace('    "msgpack>=', '    "six>=1.16",\n    "msgpack>=', 1))
    done = install(project, "--extra", "test")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "pyproject.toml and uv.lock disagree, so nothing was installed" in done.stderr
    assert "scripts/lock" in done.stderr
    assert "Would " not in done.stdout + done.stderr  # refused before any install step
