"""WebRTC signaling node: the original Go/Fiber wire protocol, clustered over Redis."""

__version__ = "0.1.0"
