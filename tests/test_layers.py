"""The layer rules (pyproject.toml, [tool.importlinter]) hold, and breaking one is caught.

scripts/test runs `lint-imports` on the tree; here the same check runs on copies of the
tree with one rule broken, so a contract that silently stopped checking would show.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def _copy(dest: Path) -> Path:
    for name in ("app", "workers", "client"):
        shutil.copytree(ROOT / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", dest)
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # The copy's packages first on the path: grimp reads the files Python would import.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tree}:{tree / 'client'}"}
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_tree_keeps_every_layer_rule(tmp_path: Path) -> None:
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("app/backends/memory.py", "import aiohttp", "Backends never import the web framework"),
    ("app/core/service.py", "import redis", "The core does no I/O"),
    ("app/core/rooms.py", "from app.edge import peer", "Layers"),
    ("app/edge/ws.py", "from app.backends import single", "Layers"),
    ("client/signaling_client/events.py", "import app.core.protocol", "stands alone"),
    ("app/core/limits.py", "from app.core import service", "No import cycles"),
], ids=["aiohttp-in-backend", "redis-in-core", "core-imports-edge", "edge-imports-backend",
        "client-imports-server", "cycle-in-core"])
def test_breaking_a_rule_fails_the_check(tmp_path: Path, module: str, line: str,
                                         contract: str) -> None:
    tree = _copy(tmp_path)
    source = tree / module
    # Under TYPE_CHECKING too: that is no escape hatch.
    guarded = f"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    {line}\n"
    text = source.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    source.write_text(head + sep + guarded + rest if sep else guarded + text)
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), result.stdout


def test_no_module_is_named_like_a_standard_library_module() -> None:
    """`app/inspect.py` once shadowed `inspect` for tools run from app/; none may again."""
    roots = [ROOT / "app", ROOT / "workers", ROOT / "client" / "signaling_client"]
    clashes = sorted(str(p.relative_to(ROOT)) for root in roots for p in root.rglob("*")
                     if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
                     and p.stem in sys.stdlib_module_names)
    assert clashes == []
