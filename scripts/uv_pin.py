"""Print the pip requirement of the uv that uv.lock records, hashes included.

Every install starts from the lock, uv too: `scripts/install` feeds this line to
`pip install --require-hashes`, so the tool that reads the lock is itself locked.
Standard library only (it runs before anything is installed).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "uv.lock"


def uv_entry(lock: Path = LOCK) -> dict[str, object]:
    packages = tomllib.loads(lock.read_text())["package"]
    for package in packages:
        if package["name"] == "uv":
            return dict(package)
    raise SystemExit(f"{lock}: no uv package (pyproject.toml's dev group pins it)")


def requirement(entry: dict[str, object]) -> str:
    files = [*entry.get("wheels", []), entry["sdist"]]  # type: ignore[list-item]
    hashes = " ".join(f"--hash={f['hash']}" for f in files)  # type: ignore[index]
    return f"uv=={entry['version']} {hashes}"


def main(argv: list[str]) -> None:
    entry = uv_entry()
    print(entry["version"] if argv[1:] == ["--version"] else requirement(entry))


if __name__ == "__main__":
    main(sys.argv)
