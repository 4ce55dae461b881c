"""A real WebRTC connection between two Python peers (aiortc), set up through two node
processes with the Python client: offer, answer and ICE go through the cluster, then a
data channel carries messages both ways, peer to peer."""

from __future__ import annotations

import asyncio
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from signaling_client.client import SignalingClient
from signaling_client.events import Answer, NewPeer, Offer, to_event

from tests.support.cluster import unique
from tests.support.procs import NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """ICE host candidates on 127.0.0.1 only: aioice skips loopback and would offer the
    machine's other addresses, and this test's packets stay on loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6:
                        ["127.0.0.1"])


def description(pc: RTCPeerConnection) -> dict[str, Any]:
    """As a browser sends it; aiortc puts every candidate in the SDP (no trickle)."""
    return {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}


def new_peer_connection() -> RTCPeerConnection:
    # An empty list, not None: aiortc's default is a public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def call(alice: SignalingClient, pc: RTCPeerConnection, to: str) -> RTCDataChannel:
    """The offerer's side: a data channel, the offer, then the answer."""
    channel = pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    await alice.offer(to, description(pc))
    async for event in alice.events():
        if isinstance(event, Answer) and event.sender == to:
            await pc.setRemoteDescription(RTCSessionDescription(**event.sdp))
            return channel
    raise AssertionError(f"closed with {alice.close_code} before an answer")


async def pick_up(bob: SignalingClient, pc: RTCPeerConnection) -> None:
    """The answerer's side."""
    async for event in bob.events():
        if isinstance(event, Offer):
            await pc.setRemoteDescription(RTCSessionDescription(**event.sdp))
            await pc.setLocalDescription(await pc.createAnswer())
            await bob.answer(event.sender, description(pc))
            return
    raise AssertionError(f"closed with {bob.close_code} before an offer")


async def test_two_aiortc_peers_on_different_nodes_talk_over_a_data_channel(
    node_processes: list[NodeProcess],
) -> None:
    room = unique("rtc")
    alice_pc, bob_pc = new_peer_connection(), new_peer_connection()
    loop = asyncio.get_running_loop()
    to_bob: asyncio.Future[str] = loop.create_future()
    to_alice: asyncio.Future[str] = loop.create_future()
    opened: asyncio.Future[None] = loop.create_future()

    @bob_pc.on("datachannel")
    def on_channel(channel: RTCDataChannel) -> None:
        channel.on("message", lambda message: (to_bob.set_result(message),
                                               channel.send(f"hi back: {message}")))

    try:
        async with await SignalingClient.connect(node_processes[0].url, room, "alice") as a, \
                await SignalingClient.connect(node_processes[1].url, room, "bob") as b:
            assert a.node != b.node
            assert to_event(await a.recv()) == NewPeer("bob")
            async with asyncio.timeout(20):
                channel, _ = await asyncio.gather(call(a, alice_pc, "bob"), pick_up(b, bob_pc))
                channel.on("message", to_alice.set_result)
                channel.on("open", lambda: opened.set_result(None))
                if channel.readyState != "open":
                    await opened
                channel.send("hello over webrtc")
                assert await to_bob == "hello over webrtc"
                assert await to_alice == "hi back: hello over webrtc"
            assert alice_pc.connectionState == bob_pc.connectionState == "connected"
            candidates = [line for pc in (alice_pc, bob_pc)
                          for line in pc.localDescription.sdp.splitlines()
                          if line.startswith("a=candidate:")]
            assert candidates and all(" 127.0.0.1 " in line for line in candidates)
    finally:
        await alice_pc.close()
        await bob_pc.close()
