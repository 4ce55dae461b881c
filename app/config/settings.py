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
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from dotenv import load_dotenv

from app.config.keyfiles import MIN_SECRET_BYTES, load_public_key
from app.config.networks import parse_networks
from app.config.redisurl import BadRedisUrl, parse_redis_url
from app.core.ice import IceServers
from app.core.ids import ID_PATTERN
from app.core.rules import RateSpec, Rules

# The original's Next.js dev server, and the demo page that a node on the default port
# serves itself (app/edge/page.py).
DEFAULT_ORIGINS = "http://localhost:3000,http://localhost:3001,http://127.0.0.1:3001"


class ConfigError(ValueError):
    """A setting has a value the node cannot run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 3001
    redis_url: str | None = None
    node_id: str = field(default_factory=lambda: default_node_id())
    key_prefix: str = "sig:"
    allowed_origins: tuple[str, ...] = tuple(DEFAULT_ORIGINS.split(","))
    log_level: str = "info"
    log_format: str = "json"
    max_frame_bytes: int = 65536
    hard_frame_bytes: int = 1048576
    rate_limit_per_s: float = 100.0
    rate_limit_burst: int = 1000
    rate_limit_strikes: int = 100
    rate_limit_bytes_per_s: float = 262144.0
    request_timeout_s: float = 10.0
    max_json_depth: int = 32
    max_conns_per_ip: int = 100
    trusted_proxies: tuple[str, ...] = ()
    room_max_peers: int = 100
    max_rooms_per_node: int = 10000
    auth_secret: str = field(default="", repr=False)
    auth_public_key: str = ""
    send_queue_bytes: int = 1048576
    node_ttl_seconds: float = 4.0
    ws_heartbeat_seconds: float = 20.0
    drain_seconds: float = 5.0
    resume_seconds: float = 15.0
    resume_backlog: int = 512
    # operations: admin API, ICE servers for clients, room-event webhooks
    admin_token: str | None = None
    ice_stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl_seconds: int = 86400
    webhook_events: bool = False
    webhook_stream_maxlen: int = 100_000
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_max_attempts: int = 8
    webhook_timeout_seconds: float = 5.0
    webhook_backoff_seconds: float = 1.0
    webhook_backoff_max_seconds: float = 60.0
    webhook_consumer: str = ""
    webhook_claim_idle_seconds: float = 300.0
    event_loop: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `env` (default: `os.environ`), rejecting bad values."""
        e = os.environ if env is None else env
        r = EnvReader(e)
        settings = cls(
            host=r.text("HOST", "0.0.0.0"),
            port=r.integer("PORT", 3001, lo=0, hi=65535),
            redis_url=r.text("REDIS_URL", "") or None,
            node_id=r.text("NODE_ID", "") or default_node_id(),
            key_prefix=r.text("KEY_PREFIX", "sig:"),
            allowed_origins=r.items("ALLOWED_ORIGINS", DEFAULT_ORIGINS),
            log_level=r.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=r.choice("LOG_FORMAT", "json", ("json", "console")),
            max_frame_bytes=r.integer("MAX_FRAME_BYTES", 65536, lo=64),
            hard_frame_bytes=r.integer("HARD_FRAME_BYTES", 1048576, lo=64),
            rate_limit_per_s=r.number("RATE_LIMIT_PER_S", 100.0, lo=0.0),
            rate_limit_burst=r.integer("RATE_LIMIT_BURST", 1000, lo=1),
            send_queue_bytes=r.integer("SEND_QUEUE_BYTES", 1048576, lo=1024),
            node_ttl_seconds=r.number("NODE_TTL_SECONDS", 4.0, lo=1.0),
            ws_heartbeat_seconds=r.number("WS_HEARTBEAT_SECONDS", 20.0, lo=0.0),
            drain_seconds=r.number("DRAIN_SECONDS", 5.0, lo=0.0),
            resume_seconds=r.number("RESUME_SECONDS", 15.0, lo=0.0),
            resume_backlog=r.integer("RESUME_BACKLOG", 512, lo=1, hi=100_000),
            # security controls (limits, client addresses, token auth)
            rate_limit_strikes=r.integer("RATE_LIMIT_STRIKES", 100, lo=0),
            rate_limit_bytes_per_s=r.number("RATE_LIMIT_BYTES_PER_S", 262144.0, lo=0.0),
            request_timeout_s=r.number("REQUEST_TIMEOUT_S", 10.0, lo=0.1),
            max_json_depth=r.integer("MAX_JSON_DEPTH", 32, lo=2, hi=1000),
            max_conns_per_ip=r.integer("MAX_CONNS_PER_IP", 100, lo=0),
            trusted_proxies=r.items("TRUSTED_PROXIES", ""),
            room_max_peers=r.integer("ROOM_MAX_PEERS", 100, lo=0),
            max_rooms_per_node=r.integer("MAX_ROOMS_PER_NODE", 10000, lo=0),
            auth_secret=r.text("AUTH_SECRET", ""),
            auth_public_key=r.public_key("AUTH_PUBLIC_KEY", "AUTH_PUBLIC_KEY_FILE"),
            # operations features (admin API, ICE servers, webhooks)
            admin_token=r.text("ADMIN_TOKEN", "") or None,
            ice_stun_urls=r.items("ICE_STUN_URLS", ""),
            turn_urls=r.items("TURN_URLS", ""),
            turn_secret=r.text("TURN_SECRET", "") or None,
            turn_ttl_seconds=r.integer("TURN_TTL_SECONDS", 86400, lo=60),
            webhook_events=r.flag("WEBHOOK_EVENTS", False),
            webhook_stream_maxlen=r.integer("WEBHOOK_STREAM_MAXLEN", 100_000, lo=100),
            webhook_url=r.text("WEBHOOK_URL", "") or None,
            webhook_secret=r.text("WEBHOOK_SECRET", "") or None,
            webhook_max_attempts=r.integer("WEBHOOK_MAX_ATTEMPTS", 8, lo=1),
            webhook_timeout_seconds=r.number("WEBHOOK_TIMEOUT_SECONDS", 5.0, lo=0.1),
            webhook_backoff_seconds=r.number("WEBHOOK_BACKOFF_SECONDS", 1.0, lo=0.0),
            webhook_backoff_max_seconds=r.number("WEBHOOK_BACKOFF_MAX_SECONDS", 60.0, lo=0.0),
            webhook_consumer=r.text("WEBHOOK_CONSUMER", ""),
            webhook_claim_idle_seconds=r.number("WEBHOOK_CLAIM_IDLE_SECONDS", 300.0, lo=0.1),
            event_loop=r.choice("EVENT_LOOP", "auto", ("auto", "uvloop", "asyncio")),
        )
        settings.check()
        return settings

    @property
    def rate_limit_bytes_burst(self) -> int:
        """Bytes a peer may send at once: four seconds' worth, and at least one largest
        frame, so a whole SDP always passes when the peer has been quiet."""
        return max(int(4 * self.rate_limit_bytes_per_s), self.max_frame_bytes)

    def rules(self) -> Rules:
        """What the core enforces, from these settings."""
        return Rules(
            room_max_peers=self.room_max_peers, max_rooms_per_node=self.max_rooms_per_node,
            max_frame_bytes=self.max_frame_bytes, max_json_depth=self.max_json_depth,
            rate=RateSpec(self.rate_limit_per_s, self.rate_limit_burst, self.rate_limit_strikes,
                          self.rate_limit_bytes_per_s, self.rate_limit_bytes_burst),
            ice=IceServers(self.ice_stun_urls, self.turn_urls, self.turn_secret,
                           self.turn_ttl_seconds),
            resume_seconds=self.resume_seconds, resume_backlog=self.resume_backlog,
            resume_backlog_bytes=self.send_queue_bytes,
        )

    def check(self) -> None:
        """Cross-field rules that a single variable cannot express."""
        if not ID_PATTERN.fullmatch(self.node_id):
            raise ConfigError(f"NODE_ID {self.node_id!r} must match {ID_PATTERN.pattern}")
        if self.hard_frame_bytes < self.max_frame_bytes:
            raise ConfigError("HARD_FRAME_BYTES must be at least MAX_FRAME_BYTES")
        if not re.fullmatch(r"[A-Za-z0-9:._-]*", self.key_prefix):
            raise ConfigError("KEY_PREFIX may hold only letters, digits and : . _ -")
        if self.redis_url:
            try:
                parse_redis_url(self.redis_url)
            except BadRedisUrl as exc:
                raise ConfigError(str(exc)) from None
        _check_security(self)
        _check_operations(self)


def _check_security(s: Settings) -> None:
    try:
        parse_networks(s.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXIES: {exc}") from None
    if s.auth_secret and s.auth_public_key:
        raise ConfigError("set AUTH_SECRET or AUTH_PUBLIC_KEY(_FILE), not both")
    if s.auth_secret and len(s.auth_secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes (HS256)")
    if s.auth_public_key:
        try:
            load_public_key(s.auth_public_key)
        except ValueError as exc:
            raise ConfigError(f"AUTH_PUBLIC_KEY: {exc}") from None


MIN_ADMIN_TOKEN_CHARS = 32


def _check_operations(s: Settings) -> None:
    if s.admin_token is not None and len(s.admin_token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters "
                          "(`openssl rand -hex 24` makes one): it is a password to every room")
    if s.webhook_events and not s.redis_url:
        raise ConfigError("WEBHOOK_EVENTS=1 needs REDIS_URL: room events live in a Redis stream")
    if any(not url.startswith(("stun:", "stuns:")) for url in s.ice_stun_urls):
        raise ConfigError("ICE_STUN_URLS entries must start with stun: or stuns:")
    if any(not url.startswith(("turn:", "turns:")) for url in s.turn_urls):
        raise ConfigError("TURN_URLS entries must start with turn: or turns:")
    if s.turn_urls and not s.turn_secret:
        raise ConfigError("TURN_URLS needs TURN_SECRET (coturn's static-auth-secret)")
    if s.webhook_url and not s.webhook_url.startswith(("http://", "https://")):
        raise ConfigError("WEBHOOK_URL must start with http:// or https://")
    if s.webhook_claim_idle_seconds <= s.webhook_backoff_max_seconds + s.webhook_timeout_seconds:
        raise ConfigError("WEBHOOK_CLAIM_IDLE_SECONDS must exceed WEBHOOK_BACKOFF_MAX_SECONDS + "
                          "WEBHOOK_TIMEOUT_SECONDS (a live worker's retry is not abandoned)")
    if s.webhook_consumer and not ID_PATTERN.fullmatch(s.webhook_consumer):
        raise ConfigError(f"WEBHOOK_CONSUMER must match {ID_PATTERN.pattern}")


_S = TypeVar("_S")


def settings_or_exit(read: Callable[[Mapping[str, str]], _S]) -> _S:
    """For commands: load `.env` (or ENV_FILE), read settings, exit 2 naming a bad value.

    Real environment variables win over the file.
    """
    load_dotenv(os.environ.get("ENV_FILE", ".env"), override=False)
    try:
        return read(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def default_node_id() -> str:
    """Host name plus a random suffix: unique per process, readable in `redis-cli`."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40].strip("-._") or "node"
    return f"{host}-{secrets.token_hex(4)}"


class EnvReader:
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

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name, "1" if default else "0").lower()
        if raw not in _FLAGS:
            raise ConfigError(f"{name}={raw!r} must be one of 1, 0, true, false, yes, no")
        return _FLAGS[raw]

    def items(self, name: str, default: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.text(name, default).split(",") if item.strip())

    def public_key(self, name: str, file_name: str) -> str:
        """PEM text from `name` (a literal `\\n` stands for a newline) or the file `file_name`."""
        pem = self.text(name, "").replace("\\n", "\n")
        path = self.text(file_name, "")
        if pem and path:
            raise ConfigError(f"set {name} or {file_name}, not both")
        if not path:
            return pem
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file_name}={path!r} cannot be read: {exc}") from None


_FLAGS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}
_N = TypeVar("_N", int, float)


def _bounded(name: str, value: _N, lo: _N | None, hi: _N | None) -> _N:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value
