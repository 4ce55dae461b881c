"""Node configuration from the environment (and an optional `.env` file).

Every variable is listed, with a comment, in `.env.example`; the README's table is
generated from the same names. Values are validated here so that a typo stops the node
at start-up with a clear message instead of misbehaving later.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from app.ids import ID_PATTERN


class ConfigError(ValueError):
    """A setting has a value the node cannot run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3001
    redis_url: str | None = None
    node_id: str = field(default_factory=lambda: default_node_id())
    key_prefix: str = "sig:"
    allowed_origins: tuple[str, ...] = ("http://localhost:3000",)
    log_level: str = "info"
    log_format: str = "json"
    max_frame_bytes: int = 65536
    hard_frame_bytes: int = 1048576
    rate_limit_per_s: float = 100.0
    rate_limit_burst: int = 1000
    send_queue_bytes: int = 1048576
    node_ttl_seconds: float = 6.0
    ws_heartbeat_seconds: float = 20.0
    event_loop: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: `os.environ`), rejecting bad values."""
        e = os.environ if env is None else env
        r = _Reader(e)
        settings = cls(
            host=r.text("HOST", "0.0.0.0"),
            port=r.integer("PORT", 3001, lo=0, hi=65535),
            redis_url=r.text("REDIS_URL", "") or None,
            node_id=r.text("NODE_ID", "") or default_node_id(),
            key_prefix=r.text("KEY_PREFIX", "sig:"),
            allowed_origins=r.items("ALLOWED_ORIGINS", "http://localhost:3000"),
            log_level=r.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=r.choice("LOG_FORMAT", "json", ("json", "console")),
            max_frame_bytes=r.integer("MAX_FRAME_BYTES", 65536, lo=64),
            hard_frame_bytes=r.integer("HARD_FRAME_BYTES", 1048576, lo=64),
            rate_limit_per_s=r.number("RATE_LIMIT_PER_S", 100.0, lo=0.0),
            rate_limit_burst=r.integer("RATE_LIMIT_BURST", 1000, lo=1),
            send_queue_bytes=r.integer("SEND_QUEUE_BYTES", 1048576, lo=1024),
            node_ttl_seconds=r.number("NODE_TTL_SECONDS", 6.0, lo=1.0),
            ws_heartbeat_seconds=r.number("WS_HEARTBEAT_SECONDS", 20.0, lo=0.0),
            event_loop=r.choice("EVENT_LOOP", "auto", ("auto", "uvloop", "asyncio")),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules that a single variable cannot express."""
        if not ID_PATTERN.fullmatch(self.node_id):
            raise ConfigError(f"NODE_ID {self.node_id!r} must match {ID_PATTERN.pattern}")
        if self.hard_frame_bytes < self.max_frame_bytes:
            raise ConfigError("HARD_FRAME_BYTES must be at least MAX_FRAME_BYTES")
        if not re.fullmatch(r"[A-Za-z0-9:._-]*", self.key_prefix):
            raise ConfigError("KEY_PREFIX may hold only letters, digits and : . _ -")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")


def default_node_id() -> str:
    """Host name plus a random suffix: unique per process, readable in `redis-cli`."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40].strip("-._") or "node"
    return f"{host}-{secrets.token_hex(4)}"


class _Reader:
    """Typed access to environment variables with the variable named in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        return self._env.get(name, default).strip()

    def integer(self, name: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        raw = self.text(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        return _bounded(name, value, lo, hi)

    def number(self, name: str, default: float, lo: float | None = None) -> float:
        raw = self.text(name, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        return _bounded(name, value, lo, None)

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in options:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(options)}")
        return value

    def items(self, name: str, default: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.text(name, default).split(",") if item.strip())


_N = TypeVar("_N", int, float)


def _bounded(name: str, value: _N, lo: _N | None, hi: _N | None) -> _N:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value
