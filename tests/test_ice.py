"""`welcome.data.iceServers`: STUN URLs, and TURN REST API credentials coturn accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
from signaling_client.client import SignalingClient

from app.config.settings import ConfigError, Settings
from app.node import create_app
from tests.support.cluster import node_settings

SECRET = "coturn-static-auth-secret"


def coturn_password(secret: str, username: str) -> str:
    """What coturn computes under use-auth-secret (turnserver's default HMAC-SHA1)."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), username.encode("utf-8"),
                                     hashlib.sha1).digest()).decode("ascii")


async def node_url(start_server: Any, **env: str) -> str:
    parsed = Settings.from_env(env)
    settings = node_settings(0, ice_stun_urls=parsed.ice_stun_urls, turn_urls=parsed.turn_urls,
                             turn_secret=parsed.turn_secret,
                             turn_ttl_seconds=parsed.turn_ttl_seconds)
    server = await start_server(create_app(settings))
    return str(server.make_url("")).rstrip("/")


async def test_welcome_carries_stun_and_turn_with_credentials_coturn_accepts(
    start_server: Any
) -> None:
    url = await node_url(start_server, ICE_STUN_URLS="stun:stun.example.org:3478",
                         TURN_URLS="turn:turn.example.org:3478?transport=udp, "
                                   "turns:turn.example.org:5349",
                         TURN_SECRET=SECRET, TURN_TTL_SECONDS="600")
    async with await SignalingClient.connect(url, "room", "alice") as a:
        stun, turn = a.welcome.data["iceServers"]
    assert stun == {"urls": ["stun:stun.example.org:3478"]}
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp",
                            "turns:turn.example.org:5349"]
    expiry, _, peer = turn["username"].partition(":")
    assert peer == "alice" and abs(int(expiry) - (time.time() + 600)) < 5
    assert turn["credential"] == coturn_password(SECRET, turn["username"])
    assert turn["credential"] != coturn_password("another-secret", turn["username"])


async def test_every_peer_gets_its_own_username(start_server: Any) -> None:
    url = await node_url(start_server, TURN_URLS="turn:t.example.org", TURN_SECRET=SECRET)
    async with await SignalingClient.connect(url, "room", "alice") as a, \
            await SignalingClient.connect(url, "room") as b:
        names = [c.welcome.data["iceServers"][0]["username"] for c in (a, b)]
    assert names[0].endswith(":alice") and names[1].endswith(f":{b.peer_id}")
    assert abs(int(names[0].split(":")[0]) - (time.time() + 86400)) < 5


async def test_nothing_configured_adds_nothing_to_welcome(start_server: Any) -> None:
    url = await node_url(start_server)
    async with await SignalingClient.connect(url, "room", "alice") as a:
        assert set(a.welcome.data) == {"peer", "peers", "node", "resume", "resumed"}  # no ICE


@pytest.mark.parametrize("env", [
    {"TURN_URLS": "turn:t.example.org"},  # no secret
    {"TURN_URLS": "http://t.example.org", "TURN_SECRET": "s"},
    {"ICE_STUN_URLS": "turn:t.example.org"},
    {"TURN_TTL_SECONDS": "5"},
])
def test_bad_ice_settings_stop_start_up(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"TURN|STUN"):
        Settings.from_env(env)
