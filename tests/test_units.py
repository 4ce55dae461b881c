"""Small pure pieces: envelope codec, configuration, ids, rate limits, client addresses."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from types import SimpleNamespace

import msgpack
import pytest
import uvloop

from app.backends.rediswire.keys import Keys
from app.cli.serve import loop_factory
from app.config.networks import parse_networks
from app.config.redisurl import RedisTarget, parse_redis_url
from app.config.settings import ConfigError, Settings
from app.core import envelope, limits, protocol
from app.core.envelope import BadEnvelope, Chat, Join, Kick, Leave, Relay
from app.core.ids import is_valid_id, is_valid_peer, new_peer_id
from app.core.limits import RateLimit, TokenBucket, Verdict
from app.core.protocol import ErrorCode, FrameError, depth, parse_frame
from app.edge.clientip import client_ip, limit_key


def test_envelopes_round_trip_and_frames_stay_binary() -> None:
    frame = b'{"type":"chat","data":"\xc3\xa9"}'
    assert envelope.decode(envelope.chat("n1", frame, 1.5)) == Chat("n1", frame, 1.5)
    assert envelope.decode(envelope.relay("n1", "bob", frame, 2.5)) == Relay("n1", "bob", frame,
                                                                            2.5)
    assert envelope.decode(envelope.join("n1", "bob", "c1", True)) == Join("n1", "bob", "c1", True)
    assert envelope.decode(envelope.leave("n1", "bob", "c1")) == Leave("n1", "bob", "c1")
    assert envelope.decode(envelope.kick("n1", "bob", 4002, "kicked")) == Kick(
        "n1", "bob", 4002, "kicked")
    assert envelope.decode(envelope.kick("n1", None, 4003, "")) == Kick("n1", None, 4003, "")


def test_relays_and_chats_carry_the_origin_wall_clock() -> None:
    before = time.time()
    decoded = envelope.decode(envelope.relay("n1", "bob", b"{}"))
    assert isinstance(decoded, Relay) and before <= decoded.sent <= time.time()


@pytest.mark.parametrize("items", [
    [2, "c", "n1", b"{}"], [1, "c", "n1"], [1, "x", "n1", b"{}"], [1, "c", "bad id", b"{}"],
    [1, "j", "n1", "p", "c", "yes"], [1, "r", "n1", 5, b"{}", 1.0], {"v": 1}, "text",
    [1, "c", "n1", b"{}"], [1, "c", "n1", b"{}", 1], [1, "c", "n1", b"{}", float("nan")],
    [1, "r", "n1", "bob", b"{}"], [1, "k", "n1", "bob", 4002], [1, "k", "n1", "bad id", 4002, ""],
    [1, "k", "n1", None, 99, ""], [1, "k", "n1", None, True, ""], [1, "k", "n1", None, 4002, 7],
    [1, "k", "n1", None, 4002, "x" * 124],
    [1, "c", "n1", b"[1]", 1.0], [1, "c", "n1", b'{"a":"\xff"}', 1.0],
    [1, "r", "n1", "b", b"", 1.0], [1, "c", "n1", b"{}", *range(10)],
    [1, "c", "n" * 300, b"{}", 1.0], [1, "c", "n1", {"x": 1}, 1.0],
])
def test_envelopes_of_the_wrong_shape_are_refused(items: object) -> None:
    with pytest.raises(BadEnvelope):
        envelope.decode(msgpack.packb(items, use_bin_type=True))


def test_settings_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert s.port == 3001 and s.redis_url is None and s.key_prefix == "sig:"
    assert s.allowed_origins == ("http://localhost:3000", "http://localhost:3001",
                                 "http://127.0.0.1:3001")
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
    {"REDIS_URL": "http://x"}, {"REDIS_URL": "redis+cluster://h:1/0"},
    {"REDIS_URL": "redis+cluster://h:port"}, {"REDIS_URL": "redis+sentinel://h:26379"},
    {"REDIS_URL": "redis+sentinel://h/m/0?tls=1"}, {"REDIS_URL": "redis+cluster://:1"},
    {"MAX_FRAME_BYTES": "5000", "HARD_FRAME_BYTES": "4000"},
    {"KEY_PREFIX": "a b"}, {"RATE_LIMIT_PER_S": "-1"},
    {"WEBHOOK_EVENTS": "1"}, {"WEBHOOK_EVENTS": "maybe"}, {"WEBHOOK_URL": "ftp://x"},
    {"WEBHOOK_BACKOFF_MAX_SECONDS": "600"}, {"WEBHOOK_CONSUMER": "a b"},
])
def test_bad_settings_stop_start_up_with_the_variable_named(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env)).split("_")[0]):
        Settings.from_env(env)


def test_redis_url_forms() -> None:
    assert parse_redis_url("redis://r:6379/1") == RedisTarget("single", "redis://r:6379/1")
    url = "redis+cluster://:s3cret@10.0.0.1:7000, 10.0.0.2 ,[::1]:7002"
    assert parse_redis_url(url) == RedisTarget(
        "cluster", url, (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)),
        password="s3cret")
    url = "rediss+sentinel://app:pw@s1,s2:26380/my%20master/2?sentinel_password=sp"
    assert parse_redis_url(url) == RedisTarget(
        "sentinel", url, (("s1", 26379), ("s2", 26380)), service="my master", db=2,
        username="app", password="pw", sentinel_password="sp", tls=True)


def test_operations_settings() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://r", "WEBHOOK_EVENTS": "yes",
                           "WEBHOOK_URL": "https://h.example/x", "ADMIN_TOKEN": f" {'t' * 32} "})
    assert s.webhook_events and s.webhook_stream_maxlen == 100_000 and s.admin_token == "t" * 32
    with pytest.raises(ConfigError, match="ADMIN_TOKEN must be at least 32 characters"):
        Settings.from_env({"ADMIN_TOKEN": "a"})
    assert Settings.from_env({}).admin_token is None and not Settings.from_env({}).webhook_events


def test_ids() -> None:
    assert is_valid_id("a") and is_valid_id("A.b_c-9" + "x" * 57)
    assert not is_valid_id("a" * 65) and not is_valid_id("") and not is_valid_id(".a")
    assert not is_valid_peer("server") and is_valid_peer("servers")
    assert not is_valid_peer("SERVER") and not is_valid_peer("Server")
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


def test_byte_rate_refuses_a_sender_past_its_burst_and_failures_lock_out_a_guesser(
) -> None:
    rate = RateLimit(1000, 1000, 0, bytes_per_s=1, bytes_burst=100_000)
    assert [rate.check(60_000) for _ in range(2)] == [Verdict.PASS, Verdict.REFUSE]
    assert rate.check(10) is Verdict.PASS  # small frames still pass from what is left
    failures = limits.Failures(rate=0.001, burst=3, clients=2)
    for _ in range(3):
        assert not failures.blocked("a")
        failures.failed("a")
    assert failures.blocked("a") and not failures.blocked("b")
    failures.failed("b")
    failures.failed("c")  # a third client: the oldest ("a") is forgotten, memory bounded
    assert not failures.blocked("a")


def test_rate_limit_strikes_build_up_while_flooding_and_wear_off_when_calm(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: now[0]))
    rl = RateLimit(rate=1.0, burst=1, strikes=3)
    P, R, C = Verdict.PASS, Verdict.REFUSE, Verdict.CLOSE
    assert [rl.check() for _ in range(3)] == [P, R, R]  # two strikes
    now[0] += 1.0
    assert rl.check() is P  # an accepted frame takes one strike away
    assert [rl.check() for _ in range(2)] == [R, C]
    never = RateLimit(rate=1.0, burst=1, strikes=0)
    assert {never.check() for _ in range(100)} == {P, R}


@pytest.mark.parametrize(("text", "message"), [
    ("", "the frame is empty: send one JSON object"),
    ("  \n", "the frame is empty: send one JSON object"),
    ('{"type": "chat", "data": NaN}',
     "not valid JSON at line 1, column 26: NaN and Infinity are not JSON numbers"),
    ('{"data": -Infinity}',
     "not valid JSON at line 1, column 11: NaN and Infinity are not JSON numbers"),
    ('{"data": 1e400}', "not valid JSON at line 1, column 10: the number is too large"),
    ('{"data": "\\ud800"}', "not valid JSON at line 1, column 11: a \\uD800-\\uDBFF escape"),
    ('{"data": "\\udc00"}', "not valid JSON at line 1, column 11: a \\uDC00-\\uDFFF escape"),
    ('{"data": "a\x01"}', "not valid JSON at line 1, column 12: control characters"),
    ('{"type": "chat",\n "data": }', "not valid JSON at line 2, column 10: unexpected character"),
    ('{"type": "chat"} x', "not valid JSON at line 1, column 18: unexpected content after"),
    ("[1, 2]", "a frame must be a JSON object"),
])
def test_bad_message_says_in_words_what_is_wrong_and_where(text: str, message: str) -> None:
    with pytest.raises(FrameError) as raised:
        parse_frame(text)
    assert raised.value.code is ErrorCode.BAD_MESSAGE
    assert str(raised.value).startswith(message), str(raised.value)
    assert "orjson" not in str(raised.value) and "double" not in str(raised.value).split("(")[0]


def test_json_depth() -> None:
    assert depth(1) == 0 and depth({}) == 1 and depth([[], {"a": [1]}]) == 3
    deep: list[object] = []
    for _ in range(500):
        deep = [deep]
    assert depth(deep) == 501


TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])


@pytest.mark.parametrize(("peer", "xff", "client"), [
    ("203.0.113.5", ["1.2.3.4"], "203.0.113.5"),  # untrusted peer: header ignored
    ("127.0.0.1", [], "127.0.0.1"),  # trusted, no header: the proxy itself
    ("127.0.0.1", ["1.2.3.4"], "1.2.3.4"),
    ("127.0.0.1", ["9.9.9.9, 1.2.3.4"], "1.2.3.4"),  # the forged left part is skipped
    ("127.0.0.1", ["1.2.3.4, 10.0.0.7"], "1.2.3.4"),  # a second trusted hop
    ("127.0.0.1", ["1.2.3.4", "10.0.0.7"], "1.2.3.4"),  # several header lines
    ("127.0.0.1", ["10.0.0.8, 10.0.0.7"], "10.0.0.8"),  # all trusted: the farthest
    ("127.0.0.1", ["1.2.3.4, garbage"], "127.0.0.1"),  # unreadable: stop at what we saw
    ("127.0.0.1", [" 2001:db8::1 "], "2001:db8::1"),
    ("::ffff:127.0.0.1", ["1.2.3.4"], "1.2.3.4"),  # IPv4-mapped peer address
    ("fd00::1", ["::ffff:1.2.3.4"], "1.2.3.4"),
    (None, ["1.2.3.4"], "unknown"),  # no address (a unix socket)
])
def test_client_ip_believes_forwarded_for_only_through_trusted_hops(
    peer: str | None, xff: list[str], client: str
) -> None:
    assert client_ip(peer, xff, TRUSTED) == client


def test_limits_count_ipv6_clients_per_64() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2")
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("1.2.3.4") == "1.2.3.4"
    with pytest.raises(ValueError, match="nginx"):
        parse_networks(["nginx"])
@pytest.mark.parametrize(("kind", "expected"), [
    ("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_event_loop_setting_picks_the_loop(kind: str, expected: type) -> None:
    assert Settings.from_env({"EVENT_LOOP": kind}).event_loop == kind
    loop = loop_factory(kind)()
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
