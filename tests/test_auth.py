"""Optional token auth (README "Security"): refusals, identity, permissions, expiry, keys."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from signaling_client.client import Refused

from app.config.settings import ConfigError, Settings
from tests.support.cluster import NodeFactory
from tests.support.peers import UPGRADE, close_all, connect, refusal, until_closed
from tests.support.tokens import SECRET, forged_hs256, hs256_with, key_pair, mint, private_pem

LATER = 2**40  # an `exp` far in the future


@pytest.fixture
async def auth_url(make_node: NodeFactory) -> str:
    return await make_node(auth_secret=SECRET)


@pytest.mark.parametrize(("path", "token", "code"), [
    ("/ws/r/alice", None, "auth-required"),
    ("/ws/r", None, "auth-required"),
    ("/ws/r/alice", mint("r", "alice", now_offset=-7200), "token-expired"),
    ("/ws/r/alice", mint("r", "alice", key="another-secret-of-at-least-32-bytes"), "bad-token"),
    ("/ws/r/alice", "not.a.jwt", "bad-token"),
    ("/ws/r/alice", mint("r", "alice", key=None, algorithm="none"), "bad-token"),
    ("/ws/r/alice", hs256_with({"sub": "alice", "room": "r"}), "bad-token"),  # no exp
    ("/ws/r/alice", hs256_with({"sub": "alice", "exp": LATER}), "bad-token"),  # no room
    ("/ws/r/alice", hs256_with({"room": "r", "exp": LATER}), "bad-token"),  # no sub
    ("/ws/r", hs256_with({"sub": "server", "room": "r", "exp": LATER}), "bad-token"),
    ("/ws/r", hs256_with({"sub": "al ice", "room": "r", "exp": LATER}), "bad-token"),
    ("/ws/r/alice", hs256_with({"sub": "alice", "room": "r", "exp": LATER, "perms": "chat"}),
     "bad-token"),
    ("/ws/r/alice", mint("other", "alice"), "wrong-room"),
    ("/ws/r/bob", mint("r", "alice"), "wrong-peer"),
])
async def test_bad_or_missing_tokens_get_401_before_the_upgrade(
    auth_url: str, http: aiohttp.ClientSession, path: str, token: str | None, code: str
) -> None:
    query = {"token": token} if token else {}
    header = {"Authorization": f"Bearer {token}"} if token else {}
    for params, headers in ((query, {}), ({}, header)):
        async with http.get(auth_url + path, params=params,
                            headers={**UPGRADE, **headers}) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            assert (await r.json())["error"]["code"] == code


async def test_a_token_for_peer_x_does_not_admit_peer_y(auth_url: str) -> None:
    with pytest.raises(Refused) as refused:
        await connect(auth_url, "r", "mallory", token=mint("r", "alice"))
    assert refused.value.status == 401
    alice = await connect(auth_url, "r", None, token=mint("r", "alice"))  # the id is `sub`
    assert alice.peer_id == "alice"
    bob = await connect(auth_url, "r", "bob",
                        headers={"Authorization": f"Bearer {mint('r', 'bob')}"})
    assert bob.peers == ["alice"]
    await close_all(alice, bob)


async def test_chat_needs_the_chat_permission(auth_url: str) -> None:
    mute = await connect(auth_url, "r", "mute", token=mint("r", "mute", perms=()))
    talk = await connect(auth_url, "r", "talk", token=mint("r", "talk", perms=("chat",)))
    await mute.next_of("new-peer")
    await mute.chat("may I?")
    err = await mute.recv()
    assert err.raw["type"] == "error" and err.data["code"] == "forbidden"
    await mute.offer("talk", {"sdp": "signaling needs no permission"})
    assert (await talk.recv()).data == {"sdp": "signaling needs no permission"}
    await talk.chat("yes")
    for client in (talk, mute):
        assert (await client.recv()).data == "yes"
    await close_all(mute, talk)


async def test_session_closes_with_4004_when_its_token_expires(auth_url: str) -> None:
    stay = await connect(auth_url, "r", "stay", token=mint("r", "stay"))
    brief = await connect(auth_url, "r", "brief", token=mint("r", "brief", ttl=1))
    await stay.next_of("new-peer")
    frames, code = await until_closed(brief, timeout=5)
    assert code == 4004 and frames == []
    assert (await stay.next_of("peer-left")).data == "brief"
    await close_all(stay, brief)


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_public_key_tokens(make_node: NodeFactory, http: aiohttp.ClientSession,
                                 algorithm: str) -> None:
    private, public_pem = key_pair(algorithm)
    url = await make_node(auth_public_key=public_pem)
    alice = await connect(url, "r", "alice", token=mint("r", "alice", key=private,
                                                        algorithm=algorithm))
    other, _ = key_pair(algorithm)
    claims = {"sub": "eve", "room": "r", "exp": LATER}
    for token in (mint("r", "eve", key=other, algorithm=algorithm),  # someone else's key
                  forged_hs256(claims, public_pem.encode()),  # the public key as a secret
                  hs256_with(claims)):
        status, body = await refusal(http, f"{url}/ws/r/eve?token={token}")
        assert (status, body["error"]["code"]) == (401, "bad-token")
    await alice.close()


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli.tokens", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip(), err.decode()


async def test_token_cli_mints_tokens_the_node_accepts(
    auth_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTH_")}
    (tmp_path / ".env").write_text(f"AUTH_SECRET={SECRET}\n")
    code, token, _ = await run_cli("--room", "r", "--peer", "cli", "--ttl", "2h",
                                   "--perm", "chat", env=env, cwd=tmp_path)
    assert code == 0
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["room"], claims["perms"]) == ("cli", "r", ["chat"])
    assert claims["exp"] - claims["iat"] == 7200
    client = await connect(auth_url, "r", None, token=token)
    assert client.peer_id == "cli"
    await client.chat("minted")
    assert (await client.recv()).data == "minted"
    await client.close()
    (tmp_path / ".env").unlink()
    code, _, err = await run_cli("--room", "r", "--peer", "p", env=env, cwd=tmp_path)
    assert code == 2 and "AUTH_SECRET" in err


async def test_token_cli_signs_with_a_private_key_file(make_node: NodeFactory,
                                                       tmp_path: Path) -> None:
    private, public_pem = key_pair("ES256")
    (tmp_path / "key.pem").write_bytes(private_pem(private))
    (tmp_path / "pub.pem").write_text(public_pem)
    settings = Settings.from_env({"AUTH_PUBLIC_KEY_FILE": str(tmp_path / "pub.pem")})
    url = await make_node(auth_public_key=settings.auth_public_key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTH_")}
    code, token, _ = await run_cli("--room", "r", "--peer", "p", "--key-file", "key.pem",
                                   env=env, cwd=tmp_path)
    assert code == 0 and jwt.get_unverified_header(token)["alg"] == "ES256"
    client = await connect(url, "r", "p", token=token)
    await client.close()


def test_public_key_may_come_with_escaped_newlines() -> None:
    _, pem = key_pair("ES256")
    escaped = Settings.from_env({"AUTH_PUBLIC_KEY": pem.strip().replace("\n", "\\n")})
    assert escaped.auth_public_key == pem.strip()
    assert SECRET not in repr(Settings.from_env({"AUTH_SECRET": SECRET}))


@pytest.mark.parametrize(("env", "name"), [
    ({"AUTH_SECRET": "too-short"}, "AUTH_SECRET"),
    ({"AUTH_SECRET": SECRET, "AUTH_PUBLIC_KEY": "x"}, "AUTH_SECRET"),
    ({"AUTH_PUBLIC_KEY": "not a key"}, "AUTH_PUBLIC_KEY"),
    ({"AUTH_PUBLIC_KEY_FILE": "/nonexistent/key.pem"}, "AUTH_PUBLIC_KEY_FILE"),
    ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "nginx"}, "TRUSTED_PROXIES"),
    ({"MAX_JSON_DEPTH": "1"}, "MAX_JSON_DEPTH"),
    ({"ROOM_MAX_PEERS": "-1"}, "ROOM_MAX_PEERS"),
])
def test_bad_security_settings_stop_start_up(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_small_rsa_keys_are_refused() -> None:
    small: Any = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="2048"):
        Settings.from_env({"AUTH_PUBLIC_KEY": pem.decode()})
