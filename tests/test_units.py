"""Small pure pieces: envelope codec, configuration, ids, token bucket."""

from __future__ import annotations

import asyncio
import tracemalloc

import msgpack
import pytest
import uvloop

from app import envelope, protocol
from app.config import ConfigError, Settings
from app.envelope import BadEnvelope, Chat, Join, Leave, Relay
from app.ids import is_valid_id, is_valid_peer, new_peer_id
from app.keys import Keys
from app.limits import TokenBucket
from app.main import new_event_loop


def test_envelopes_round_trip_and_frames_stay_binary() -> None:
    frame = b'{"type":"chat","data":"\xc3\xa9"}'
    assert envelope.decode(envelope.chat("n1", frame)) == Chat("n1", frame)
    assert envelope.decode(envelope.relay("n1", "bob", frame)) == Relay("n1", "bob", frame)
    assert envelope.decode(envelope.join("n1", "bob", "c1", True)) == Join("n1", "bob", "c1", True)
    assert envelope.decode(envelope.leave("n1", "bob", "c1")) == Leave("n1", "bob", "c1")


@pytest.mark.parametrize("items", [
    [2, "c", "n1", b"{}"], [1, "c", "n1"], [1, "x", "n1", b"{}"], [1, "c", "bad id", b"{}"],
    [1, "j", "n1", "p", "c", "yes"], [1, "r", "n1", 5, b"{}"], {"v": 1}, "text",
])
def test_envelopes_of_the_wrong_shape_are_refused(items: object) -> None:
    with pytest.raises(BadEnvelope):
        envelope.decode(msgpack.packb(items, use_bin_type=True))


def test_settings_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert s.port == 3001 and s.redis_url is None and s.key_prefix == "sig:"
    assert s.allowed_origins == ("http://localhost:3000",)
    assert s.max_frame_bytes == 65536 and s.hard_frame_bytes == 1048576
    assert s.rate_limit_per_s == 100 and s.rate_limit_burst == 1000
    assert s.send_queue_bytes == 1048576 and is_valid_id(s.node_id)


def test_settings_read_every_variable() -> None:
    s = Settings.from_env({"HOST": "127.0.0.1", "PORT": "4000", "REDIS_URL": "redis://r:6379/1",
                           "NODE_ID": "n-1", "ALLOWED_ORIGINS": "https://a.example, https://b",
                           "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "console", "KEY_PREFIX": "x:"})
    assert (s.host, s.port, s.redis_url, s.node_id) == ("127.0.0.1", 4000, "redis://r:6379/1",
                                                        "n-1")
    assert s.allowed_origins == ("https://a.example", "https://b")
    assert (s.log_level, s.log_format, s.key_prefix) == ("debug", "console", "x:")


@pytest.mark.parametrize("env", [
    {"PORT": "eighty"}, {"PORT": "70000"}, {"NODE_ID": "has space"}, {"LOG_FORMAT": "xml"},
    {"REDIS_URL": "http://x"}, {"MAX_FRAME_BYTES": "5000", "HARD_FRAME_BYTES": "4000"},
    {"KEY_PREFIX": "a b"}, {"RATE_LIMIT_PER_S": "-1"},
])
def test_bad_settings_stop_start_up_with_the_variable_named(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env)).split("_")[0]):
        Settings.from_env(env)


def test_ids() -> None:
    assert is_valid_id("a") and is_valid_id("A.b_c-9" + "x" * 57)
    assert not is_valid_id("a" * 65) and not is_valid_id("") and not is_valid_id(".a")
    assert not is_valid_peer("server") and is_valid_peer("servers")
    pid = new_peer_id()
    assert is_valid_peer(pid) and len(pid) * 4 >= 96


def test_keys_put_room_and_node_ids_in_hash_tags() -> None:
    k = Keys("sig:")
    assert k.rooms == "sig:rooms"
    assert k.room_peers("R") == "sig:room:{R}:peers"
    assert k.room_channel("R") == "sig:room:{R}"
    assert k.node("N") == "sig:node:{N}"


def test_token_bucket_allows_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=0.001, burst=2)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    assert all(TokenBucket(0, 1).take() for _ in range(100))


@pytest.mark.parametrize(("kind", "expected"), [
    ("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_event_loop_setting_picks_the_loop(kind: str, expected: type) -> None:
    assert Settings.from_env({"EVENT_LOOP": kind}).event_loop == kind
    loop = new_event_loop(kind)
    try:
        assert isinstance(loop, expected)
    finally:
        loop.close()
    with pytest.raises(ConfigError):
        Settings.from_env({"EVENT_LOOP": "trio"})


def test_frames_the_node_keeps_cost_their_length_not_a_buffer() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [protocol.notice_frame("new-peer", "r1", f"peer{i}") for i in range(1000)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == 1000 and grown < 1000 * 200  # orjson alone would keep 4 KiB each
