"""Python client for the signaling cluster: `SignalingClient` (one connection),
`ReconnectingClient` (stays in its room), typed events. Depends on aiohttp and orjson only."""

from signaling_client.client import Closed, Refused, SignalingClient
from signaling_client.events import Event, Frame, to_event
from signaling_client.reconnect import ReconnectingClient

__all__ = ["Closed", "Event", "Frame", "ReconnectingClient", "Refused", "SignalingClient",
           "to_event"]
