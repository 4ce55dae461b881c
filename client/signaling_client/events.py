"""Typed events for the frames a node sends (contract §1), for bots written in Python.

    match to_event(frame):
        case Welcome(peer=me, peers=others): ...
        case NewPeer(peer=p): ...
        case Offer(sender=p, sdp=sdp): ...

`to_event` never raises on what a node sends: a frame of a type this module does not know
(a newer node) becomes `Unknown`, so old bots keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Frame:
    type: str
    room: str | None
    sender: str | None
    to: str | None
    data: Any
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, text: str | bytes) -> Frame:
        obj = orjson.loads(text)
        return cls(obj.get("type", ""), obj.get("room"), obj.get("from"), obj.get("to"),
                   obj.get("data"), obj)


@dataclass(frozen=True, slots=True)
class Welcome:
    """First frame after joining: who we are, who was there, which node holds us."""

    room: str
    peer: str
    peers: tuple[str, ...]
    node: str
    ice_servers: tuple[dict[str, Any], ...] = ()  # RTCIceServer dicts, when configured
    rejoined: bool = False  # set by ReconnectingClient after a reconnect
    resumed: bool = False  # the session went on: nothing was missed, nobody was told


@dataclass(frozen=True, slots=True)
class NewPeer:
    peer: str


@dataclass(frozen=True, slots=True)
class PeerLeft:
    peer: str


@dataclass(frozen=True, slots=True)
class Offer:
    sender: str
    sdp: Any  # what the sender put in `data`; browsers send {"type": "offer", "sdp": ...}


@dataclass(frozen=True, slots=True)
class Answer:
    sender: str
    sdp: Any


@dataclass(frozen=True, slots=True)
class Ice:
    sender: str
    candidate: Any  # RTCIceCandidateInit: {"candidate", "sdpMid", "sdpMLineIndex", ...}


@dataclass(frozen=True, slots=True)
class Chat:
    sender: str
    data: Any


@dataclass(frozen=True, slots=True)
class ServerError:
    """An `error` frame: the node refused one of our frames; the connection stays open."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Unknown:
    type: str
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Disconnected:
    """Made by ReconnectingClient: the connection closed with `code` (1006, as browsers
    say, when no close frame came: the network or the node was lost). `final`: it will
    not reconnect (4001 to 4004)."""

    code: int | None
    reason: str
    final: bool
    retry_in: float | None = None


Event = (Welcome | NewPeer | PeerLeft | Offer | Answer | Ice | Chat | ServerError | Pong
         | Unknown | Disconnected)
RELAYED: dict[str, type[Offer | Answer | Ice | Chat]] = {
    "offer": Offer, "answer": Answer, "ice": Ice, "chat": Chat}


def to_event(frame: Frame) -> Event:
    """The typed event for one frame from the node."""
    data = frame.data
    if frame.type == "welcome" and isinstance(data, dict):
        return Welcome(str(frame.room), str(data["peer"]), tuple(data.get("peers", ())),
                       str(data.get("node", "")), tuple(data.get("iceServers", ())),
                       resumed=data.get("resumed") is True)
    if frame.type == "new-peer":
        return NewPeer(str(data))
    if frame.type == "peer-left":
        return PeerLeft(str(data))
    if frame.type in RELAYED and frame.sender is not None:
        return RELAYED[frame.type](frame.sender, data)
    if frame.type == "error" and isinstance(data, dict):
        return ServerError(str(data.get("code", "")), str(data.get("message", "")))
    if frame.type == "pong":
        return Pong()
    return Unknown(frame.type, frame.raw)
