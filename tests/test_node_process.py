"""The node as users run it: `python -m app` / `signaling-node`, configured by env and .env."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from signaling_client.client import Closed, SignalingClient

from tests.support.peers import barrier
from tests.support.procs import NodeProcess, RedisServer


async def test_dotenv_file_configures_the_console_script_and_logs_are_json(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    (tmp_path / ".env").write_text(
        f"NODE_ID=from-dotenv\nREDIS_URL={redis_server.url}\nKEY_PREFIX=dotenv:\n"
        "# comments are fine\nLOG_LEVEL=info\n"
    )
    script = Path(sys.executable).parent / "signaling-node"
    node = NodeProcess({}, argv=[str(script)], cwd=tmp_path).start()
    try:
        async with await SignalingClient.connect(node.url, "room", "alice") as a:
            assert a.node == "from-dotenv"
            assert redis_server.cli("SMEMBERS", "dotenv:room:{room}:peers").split() == ["alice"]
            assert redis_server.cli("EXISTS", "dotenv:node:{from-dotenv}").strip() == "1"
    finally:
        node.stop()
    lines = [json.loads(line) for line in node.logs().splitlines() if line.startswith("{")]
    started = [r for r in lines if r.get("event") == "node started"]
    assert started and started[0]["node"] == "from-dotenv" and started[0]["level"] == "info"


def test_environment_wins_over_dotenv_and_console_logs_are_readable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("NODE_ID=from-dotenv\n")
    node = NodeProcess({"NODE_ID": "from-env", "LOG_FORMAT": "console"}, cwd=tmp_path).start()
    node.stop()
    assert "node started" in node.logs() and "from-env" in node.logs()
    assert not node.logs().lstrip().startswith("{")


def test_bad_configuration_exits_2_naming_the_variable() -> None:
    env = {**os.environ, "PORT": "not-a-port"}
    done = subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 2 and "PORT" in done.stderr


async def test_sigterm_closes_peers_with_1001_and_removes_them(redis_server: RedisServer
                                                               ) -> None:
    # RESUME_SECONDS 0: the §3 drain (with resume, alice is held; tests/test_resume.py)
    env = {"REDIS_URL": redis_server.url, "KEY_PREFIX": "term:", "RESUME_SECONDS": "0"}
    one, two = NodeProcess({**env, "NODE_ID": "term1"}), NodeProcess({**env, "NODE_ID": "term2"})
    one.start()
    two.start()
    try:
        a = await SignalingClient.connect(one.url, "room", "alice")
        b = await SignalingClient.connect(two.url, "room", "bob")
        await barrier([a, b])
        one.signal(signal.SIGTERM)
        with pytest.raises(Closed) as closed:
            while True:
                await a.recv()
        assert closed.value.code == 1001
        assert (await b.recv()).raw == {"type": "peer-left", "room": "room", "from": "server",
                                        "data": "alice"}
        assert one.proc is not None and one.proc.wait(10) == 0
        assert redis_server.cli("SMEMBERS", "term:room:{room}:peers").split() == ["bob"]
        assert redis_server.cli("EXISTS", "term:node:{term1}").strip() == "0"
        await a.close()
        await b.close()
    finally:
        one.close()
        two.stop()


async def test_sigterm_without_peers_exits_at_once_and_a_last_leaver_ends_the_drain() -> None:
    """DRAIN_SECONDS is how long peers get to leave, not a pause when nobody is there."""
    idle = NodeProcess({"DRAIN_SECONDS": "60"}).start()
    idle.signal(signal.SIGTERM)
    assert idle.proc is not None and idle.proc.wait(5) == 0  # not 60 s
    busy = NodeProcess({"DRAIN_SECONDS": "60"}).start()
    try:
        a = await SignalingClient.connect(busy.url, "room", "alice")
        busy.signal(signal.SIGTERM)
        assert busy.proc is not None
        with pytest.raises(subprocess.TimeoutExpired):
            busy.proc.wait(1)  # alice still has her minute
        await a.close()  # the last peer leaves: nothing more to wait for
        assert busy.proc.wait(5) == 0
    finally:
        busy.close()
