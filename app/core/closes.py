"""Every close code a node sends (contract §1), in one place.

1000-1011 are RFC 6455's; 4001-4004 are the signaling protocol's own, and a client that
gets one of those must not reconnect with the same credentials (`FINAL_CLOSES`).
"""

from __future__ import annotations

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the node drains (deploy, scale-in): reconnect, another node answers
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005  # received close frame had no code (never sent on the wire)
CLOSE_INVALID_TEXT = 1007
CLOSE_POLICY = 1008  # rate limit, slow consumer, binary frame
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_REPLACED = 4001  # a newer connection took this peer id
CLOSE_KICKED = 4002  # an operator kicked the peer (admin API)
CLOSE_ROOM_CLOSED = 4003  # an operator closed the room (admin API)
CLOSE_TOKEN_EXPIRED = 4004  # the peer's token expired (token auth): reconnect with a new one

FINAL_CLOSES = frozenset({CLOSE_REPLACED, CLOSE_KICKED, CLOSE_ROOM_CLOSED, CLOSE_TOKEN_EXPIRED})
