"""docs/configuration.md, .env.example and the code name the same configuration variables;
CI runs the README's test command."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from app.config.settings import ConfigError, Settings
from workers.reaper import ReaperSettings

ROOT = Path(__file__).resolve().parents[1]


class Recording(Mapping[str, str]):
    """An empty environment that remembers which variables the settings asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def read_variables() -> set[str]:
    """Every variable the node and the workers read."""
    env = Recording()
    Settings.from_env(env)
    with contextlib.suppress(ConfigError):  # the reaper insists on REDIS_URL
        ReaperSettings.from_env(env)
    return env.asked


def test_env_example_lists_exactly_the_variables_the_node_reads() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z_]+)=", text, re.M))
    assert listed == read_variables()
    # every variable has a comment line right above its block
    for name in listed:
        block = text.split(f"\n{name}=")[0].rstrip().splitlines()
        assert any(line.startswith("#") for line in block[-6:]), name


def test_configuration_table_matches_the_code() -> None:
    table = (ROOT / "docs" / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.M))
    assert rows == read_variables()
    defaults = Settings.from_env({})
    assert f"| `PORT` | `{defaults.port}` |" in table
    assert f"| `MAX_FRAME_BYTES` | `{defaults.max_frame_bytes}` |" in table


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "\n```sh\n./scripts/test\n```\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert [line for line in ci.splitlines() if line and not line.startswith("#")] == [
        'exec "$(dirname "$0")/../scripts/test"']
