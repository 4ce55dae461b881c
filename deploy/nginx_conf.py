"""Render the repository's `nginx.conf` (written for docker compose) for one machine.

The same file drives both: compose mounts it as it is, and the local launcher and the
tests rewrite only the lines tagged `# @local:TAG`, so the two cannot drift apart:

- `servers`: `server node:3001 PARAMS;` becomes one `server 127.0.0.1:PORT PARAMS;` per node;
- `listen`: `listen 80 ...;` becomes `listen 127.0.0.1:PORT ...;`;
- `prefix`: `DIRECTIVE /some/path/NAME;` becomes `DIRECTIVE PREFIX/NAME;` (pid, temp paths),
  so nginx runs unprivileged with everything in a private directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "nginx.conf"

_TAGGED = re.compile(r"^(?P<indent>\s*)(?P<body>[^#]*;)\s*#\s*@local:(?P<tag>\w+)\s*$")


class RenderError(ValueError):
    """The file does not have the tagged lines the launcher needs."""


@dataclass(frozen=True, slots=True)
class LocalNginx:
    """Where the local nginx listens, which node ports it balances, where its files go."""

    listen_port: int
    node_ports: Sequence[int]
    prefix: Path
    host: str = "127.0.0.1"


def render(local: LocalNginx, text: str | None = None) -> str:
    """`text` (default: the repository's nginx.conf) with every tagged line rewritten."""
    source = NGINX_CONF.read_text() if text is None else text
    rules: dict[str, Callable[[list[str], LocalNginx], list[list[str]]]] = {
        "servers": _servers, "listen": _listen, "prefix": _prefix}
    seen: dict[str, int] = {}
    out: list[str] = []
    for number, line in enumerate(source.splitlines(), 1):
        comment = line.lstrip().startswith("#")
        match = None if comment else _TAGGED.match(line)
        if match is None:
            if "@local:" in line and not comment:
                raise RenderError(f"line {number}: a tag must follow `directive ...;`")
            out.append(line)
            continue
        tag = match["tag"]
        if tag not in rules:
            raise RenderError(f"line {number}: unknown tag @local:{tag}")
        seen[tag] = seen.get(tag, 0) + 1
        words = match["body"].rstrip(";").split()
        out.extend(f"{match['indent']}{' '.join(w)};" for w in rules[tag](words, local))
    for tag in ("servers", "listen"):
        if seen.get(tag) != 1:
            raise RenderError(f"expected exactly one @local:{tag} line, found {seen.get(tag, 0)}")
    return "\n".join(out) + "\n"


def _servers(words: list[str], local: LocalNginx) -> list[list[str]]:
    if words[0] != "server" or len(words) < 2:
        raise RenderError("@local:servers must tag an upstream `server` line")
    if not local.node_ports:
        raise RenderError("no node ports to balance")
    # `resolve` re-resolves a DNS name; a literal address has nothing to resolve.
    params = [w for w in words[2:] if w != "resolve"]
    return [["server", f"{local.host}:{port}", *params] for port in local.node_ports]


def _listen(words: list[str], local: LocalNginx) -> list[list[str]]:
    if words[0] != "listen" or len(words) < 2:
        raise RenderError("@local:listen must tag a `listen` line")
    return [["listen", f"{local.host}:{local.listen_port}", *words[2:]]]


def _prefix(words: list[str], local: LocalNginx) -> list[list[str]]:
    if len(words) < 2 or not words[1].startswith("/"):
        raise RenderError("@local:prefix must tag `directive /absolute/path ...`")
    return [[words[0], str(local.prefix / Path(words[1]).name), *words[2:]]]
