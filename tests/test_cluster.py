"""Cross-node behaviour (contract §1 and §3), run against every backend form.

Each test uses two nodes: peers on node 0 and node 1 must behave exactly as if they
shared one server. The `cluster` fixture runs every test on the in-memory hub, on
fakeredis, on a real redis-server with in-process nodes, on real node processes, and on
real node processes with a Redis Cluster of 3 masters.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from signaling_client.client import Closed, Refused, SignalingClient

from tests.support.cluster import Cluster, publish_raw, unique
from tests.support.http import scrape
from tests.support.peers import barrier, close_all, connect, drop, summary
from tests.support.wait import eventually


async def join(c: Cluster, node: int, room: str, peer: str | None = None) -> SignalingClient:
    return await SignalingClient.connect(c.urls[node], room, peer)


async def pair(c: Cluster, room: str) -> tuple[SignalingClient, SignalingClient]:
    """alice on node 0 and bob on node 1, both past their join announcements."""
    a = await join(c, 0, room, "alice")
    b = await join(c, 1, room, "bob")
    await barrier([a, b])
    return a, b


async def test_welcome_lists_peers_already_there_and_others_hear_new_peer(
    cluster: Cluster, room: str
) -> None:
    a = await join(cluster, 0, room, "alice")
    assert a.welcome.raw == {"type": "welcome", "room": room, "from": "server", "to": "alice",
                             "data": a.welcome.data}
    assert a.peers == [] and a.peer_id == "alice"
    b = await join(cluster, 1, room, "bob")
    assert b.peers == ["alice"]
    assert a.node != b.node
    note = await a.recv()
    assert note.raw == {"type": "new-peer", "room": room, "from": "server", "data": "bob"}
    c = await join(cluster, 0, room)  # no peer id: the node picks one
    assert len(c.peer_id) >= 24 and sorted(c.peers) == ["alice", "bob"]
    got = await barrier([a, b, c])
    assert summary(got[a]) == [("new-peer", c.peer_id)]
    assert summary(got[b]) == [("new-peer", c.peer_id)]
    assert got[c] == []
    await close_all(a, b, c)


async def test_relays_cross_nodes_with_from_and_room_set_by_the_node(
    cluster: Cluster, room: str
) -> None:
    a = await join(cluster, 0, room, "alice")
    b = await join(cluster, 1, room, "bob")
    await a.next_of("new-peer")
    for kind, data in (("offer", {"type": "offer", "sdp": "v=0\r\n"}),
                       ("answer", {"type": "answer", "sdp": "v=0\r\n"}),
                       ("ice", {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                                "sdpMid": "0", "sdpMLineIndex": 0})):
        await a.send_raw(json.dumps({"type": kind, "to": "bob", "from": "mallory",
                                     "room": "elsewhere", "data": data}))
        frame = await b.recv()
        assert frame.raw == {"type": kind, "room": room, "from": "alice", "to": "bob",
                             "data": data}
    await b.answer("alice", {"sdp": "back"})
    assert (await a.recv()).raw == {"type": "answer", "room": room, "from": "bob",
                                    "to": "alice", "data": {"sdp": "back"}}
    await close_all(a, b)


async def test_chat_reaches_everyone_including_sender(cluster: Cluster, room: str) -> None:
    a = await join(cluster, 0, room, "alice")
    b = await join(cluster, 1, room, "bob")
    c = await join(cluster, 1, room, "carol")
    await barrier([a, b, c])
    await b.send_raw(json.dumps({"type": "chat", "from": "alice", "data": {"text": "héllo ✓"}}))
    for client in (a, b, c):
        frame = await client.recv()
        assert frame.raw == {"type": "chat", "room": room, "from": "bob",
                             "data": {"text": "héllo ✓"}}
    await close_all(a, b, c)


async def test_unknown_target_and_other_rooms_are_peer_not_found(
    cluster: Cluster, room: str
) -> None:
    other = unique("other")
    a = await join(cluster, 0, room, "alice")
    x = await join(cluster, 1, other, "xavier")
    await a.offer("xavier", {"sdp": "nope"})
    err = await a.recv()
    assert err.type == "error" and err.data["code"] == "peer-not-found"
    await a.ice("ghost", {})
    assert (await a.recv()).data["code"] == "peer-not-found"
    got = await barrier([x])
    assert got[x] == []  # the peer of the other room heard nothing
    await a.chat("still usable")
    assert (await a.recv()).data == "still usable"
    await close_all(a, x)


async def test_relay_targets_are_the_peers_the_sender_was_told_of(
    cluster: Cluster, room: str
) -> None:
    """peer-not-found comes from the sender's own view (welcome, new-peer, peer-left): a
    peer that left is refused once its peer-left has arrived; a peer may relay to itself."""
    a, b = await pair(cluster, room)
    await a.ice("alice", {"to": "self"})
    mine = await a.recv()
    assert (mine.type, mine.sender, mine.data) == ("ice", "alice", {"to": "self"})
    await b.close()
    assert (await a.next_of("peer-left")).data == "bob"
    await a.offer("bob", {"sdp": "late"})
    err = await a.recv()
    assert err.type == "error" and err.data["code"] == "peer-not-found"
    b = await join(cluster, 1, room, "bob")  # back: reachable again from its new-peer on
    assert (await a.next_of("new-peer")).data == "bob"
    await a.offer("bob", {"sdp": "again"})
    assert (await b.next_of("offer")).data == {"sdp": "again"}
    await close_all(a, b)


async def test_a_burst_of_mixed_frames_arrives_in_order_without_duplicates(
    cluster: Cluster, room: str
) -> None:
    # 900: inside the default per-peer burst (RATE_LIMIT_BURST, 1000), which the pings of
    # pair() share; a full 1000 sent faster than the bucket refills gets one rate-limited.
    count = 900
    a, b = await pair(cluster, room)
    for i in range(count):
        if i % 2:
            await a.ice("bob", {"seq": i})
        else:
            await a.chat({"seq": i})
    seqs = [(await b.recv()).data["seq"] for _ in range(count)]
    assert seqs == list(range(count))
    got = await barrier([a, b], via=b)
    assert got[b] == []  # nothing duplicated after the last
    assert [f for f in got[a] if f.type == "error"] == []  # none of a's frames was refused
    await close_all(a, b)


async def test_offer_sent_the_instant_new_peer_arrives_is_never_lost(cluster: Cluster) -> None:
    """Announce-after-subscribe, with the joiner always the first of its room on its node."""
    rooms = [unique(f"race{i}") for i in range(100)]

    async def one(room: str) -> None:
        a = await join(cluster, 0, room, "a")
        b_task = asyncio.create_task(join(cluster, 1, room, "b"))
        note = await a.next_of("new-peer")
        await a.offer(note.data, {"sdp": room})
        b = await b_task
        offer = await b.next_of("offer", timeout=5)
        assert offer.data == {"sdp": room} and offer.sender == "a"
        await close_all(a, b)

    for start in range(0, len(rooms), 20):
        await asyncio.gather(*(one(r) for r in rooms[start:start + 20]))


async def test_concurrent_joins_tell_each_peer_of_every_other_exactly_once(
    cluster: Cluster, room: str
) -> None:
    clients = await asyncio.gather(*(join(cluster, i % 2, room, f"p{i}") for i in range(16)))
    got = await barrier(clients)
    everyone = {c.peer_id for c in clients}
    for client in clients:
        told = list(client.peers) + [f.data for f in got[client] if f.type == "new-peer"]
        assert sorted(told) == sorted(everyone - {client.peer_id})
        assert all(f.type == "new-peer" for f in got[client])
    await close_all(*clients)


async def test_peer_left_is_announced_once_and_the_room_leaves_nothing(
    cluster: Cluster, room: str
) -> None:
    a, b = await pair(cluster, room)
    assert await cluster.node_peers(b.node) >= {f"{room}/bob"}
    await b.close()
    assert summary([await a.recv()]) == [("peer-left", "bob")]  # nothing before it
    got = await barrier([a])
    assert got[a] == []  # and nothing twice
    state = await cluster.room_state(room)
    assert state["peers"] == ["alice"] and state["conns"]["alice"].startswith(f"{a.node}/")
    await index_drops(cluster, b.node, f"{room}/bob")
    await a.close()
    await wait_for_state(cluster, room, lambda s: s["subscribers"] == 0)
    state = await cluster.room_state(room)
    assert state == {"peers": [], "conns": {}, "listed": False, "subscribers": 0, "keys": []}


async def take_over(cluster: Cluster, room: str, alice_on: int, new_on: int
                    ) -> tuple[SignalingClient, SignalingClient, SignalingClient]:
    """alice, and pat on node 0 replaced by a second pat on `new_on`: checks what all see."""
    a = await join(cluster, alice_on, room, "alice")
    old = await join(cluster, 0, room, "pat")
    await barrier([a, old])
    new = await join(cluster, new_on, room, "pat")
    assert new.peers == ["alice"]
    with pytest.raises(Closed) as closed:
        while True:
            await old.recv()
    assert closed.value.code == 4001
    got = await barrier([a, new], via=a)
    assert summary(got[a]) == [("peer-left", "pat"), ("new-peer", "pat")]
    assert got[new] == []
    return a, old, new


async def test_takeover_across_nodes_keeps_one_membership_and_the_newer_connection(
    cluster: Cluster, room: str
) -> None:
    a, old, new = await take_over(cluster, room, alice_on=0, new_on=1)
    state = await cluster.room_state(room)
    assert state["peers"] == ["alice", "pat"]
    assert state["conns"]["pat"].startswith(f"{new.node}/")
    assert f"{room}/pat" in await cluster.node_peers(new.node)
    await index_drops(cluster, old.node, f"{room}/pat")
    await a.offer("pat", {"sdp": "for the new one"})
    assert (await new.recv()).data == {"sdp": "for the new one"}
    # the old connection's clean-up must not have removed the new membership
    await old.close()
    await a.offer("pat", {"sdp": "still there"})
    assert (await new.recv()).data == {"sdp": "still there"}
    state = await cluster.room_state(room)
    assert state["peers"] == ["alice", "pat"] and len(state["conns"]) == 2
    await close_all(a, new)


async def test_takeover_on_the_same_node(cluster: Cluster, room: str) -> None:
    a, old, new = await take_over(cluster, room, alice_on=1, new_on=0)
    await new.chat("hi")
    assert (await a.recv()).data == "hi"
    await close_all(a, new, old)


async def index_drops(cluster: Cluster, node: str, entry: str) -> None:
    """On one Redis the leave's script drops the node's index entry itself; on a Redis
    Cluster the node drops it a round trip after the leave is published."""
    async def gone() -> bool:
        return entry not in await cluster.node_peers(node)

    await eventually(gone, what=f"{entry} to leave the index of {node}")


async def wait_for_state(cluster: Cluster, room: str, ok: object, timeout: float = 5) -> None:
    """Unsubscribing follows the last leave asynchronously; poll the backend briefly."""
    async with asyncio.timeout(timeout):
        # Redis state has no event to await: poll it.
        while not ok(await cluster.room_state(room)):  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"garbage", b"\x93\x01\xa1r\xa1x",  # short, wrong, truncated
    b"\x95\x02\xa1c\xa5node1\xc4\x02{}\xc0",  # wrong version
    b"\x95\x01\xa1c\xa5node1\xa2{}\xcb?\xf8\x00\x00\x00\x00\x00\x00",  # str frame, not binary
    b"\x96\x01\xa1r\xa5node1\xa6no way\xc4\x02{}\xcb?\xf8\x00\x00\x00\x00\x00\x00",  # bad target
    b"\x95\x01\xa1c\xa5node1\xc4\x02{}\xa11",  # timestamp that is not a float
])
async def test_undecodable_envelopes_are_dropped_and_never_delivered(
    cluster: Cluster, room: str, payload: bytes
) -> None:
    a, b = await pair(cluster, room)
    await publish_raw(cluster, room, payload)
    got = await barrier([a, b], via=b)
    assert got[a] == [] and got[b] == []
    await close_all(a, b)


async def test_bad_input_gets_the_contract_answer_and_the_connection_stays_usable(
    cluster: Cluster, room: str
) -> None:
    for node in (0, 1):
        with pytest.raises(Refused) as refused:
            await join(cluster, node, room, "server")
        assert refused.value.status == 400
    a, b = await pair(cluster, room)
    cases = [("{not json", "bad-message"), ('{"type": "chat", "data": NaN}', "bad-message"),
             ('{"type": "wave"}', "unknown-type"),
             ('{"type": "offer", "to": "ghost", "data": {}}', "peer-not-found"),
             ('{"type": "chat", "data": "' + "x" * 70_000 + '"}', "too-large")]
    for text, code in cases:
        await a.send_raw(text)
        assert (await a.recv()).data["code"] == code
    await a.ice("bob", {"after": "errors"})
    assert (await b.recv()).data == {"after": "errors"}
    assert (await barrier([a, b]))[b] == []  # b saw none of a's bad frames
    await close_all(a, b)


async def test_a_lost_connection_resumes_on_the_other_node_with_what_it_missed(
    cluster: Cluster, room: str
) -> None:
    """Contract §6 on every form: a cut connection is held, and resumes on the other node
    with what was sent to it meanwhile; nobody saw it go."""
    a = await connect(cluster.urls[0], room, "a")
    b = await connect(cluster.urls[1], room, "b")
    await a.next_of("new-peer")
    token = b.resume_token
    assert token is not None
    drop(b)
    await b.close()

    async def held() -> bool:
        return (await scrape(cluster.urls[1])).get("signaling_held_sessions") == 1
    await eventually(held, 5, "the session held")
    for i in range(3):
        await a.offer("b", i)
    b = await connect(cluster.urls[0], room, "b", resume=token)
    assert b.resumed
    assert [(await b.recv()).data for _ in range(3)] == [0, 1, 2]
    seen = await barrier([a, b], via=a)
    assert summary(seen[a]) == []
    await close_all(a, b)
