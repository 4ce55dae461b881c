"""The limits the core enforces, as one value the node's settings build (`Settings.rules`).

The core does not read configuration: it is handed these, so a test or another front end
can run the same rules with other numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.core.ice import IceServers
from app.core.limits import RateLimit


@dataclass(frozen=True, slots=True)
class RateSpec:
    """RATE_LIMIT_*: each peer gets its own `RateLimit` made from these."""

    per_s: float = 100.0
    burst: int = 1000
    strikes: int = 100
    bytes_per_s: float = 262144.0
    bytes_burst: int = 1048576

    def new(self) -> RateLimit:
        return RateLimit(self.per_s, self.burst, self.strikes, self.bytes_per_s,
                         self.bytes_burst)


@dataclass(frozen=True, slots=True)
class Rules:
    room_max_peers: int = 100  # 0: no limit
    max_rooms_per_node: int = 10000  # 0: no limit
    max_frame_bytes: int = 65536
    max_json_depth: int = 32
    rate: RateSpec = field(default_factory=RateSpec)
    ice: IceServers = field(default_factory=IceServers)
    resume_seconds: float = 0.0  # 0: a lost connection leaves at once (§6 off)
    resume_backlog: int = 512  # frames kept for a held session
    resume_backlog_bytes: int = 1048576  # and bytes (SEND_QUEUE_BYTES: what a resume sends)
