"""Lua scripts that change membership and publish in one atomic step.

Publishing from inside the script is what makes a room channel a faithful log of its
membership: every subscriber sees a join or leave exactly where it happened relative to
relays and other joins, which is how a node decides what each of its peers was told.

The same scripts append room events to a stream for the webhook worker when asked (events
max length > 0): an event exists exactly when its membership change happened. A takeover
(the same peer id again) changes no membership and adds no event.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from redis.asyncio import Redis


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# Appends one room event to KEYS[5], trimmed near `maxlen` entries; `owner` is node/conn.
_EVENT = """
local function event(maxlen, kind, room, peer, owner)
  local node = string.match(owner, '^(.*)/[^/]*$') or owner
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*',
             'type', kind, 'room', room, 'peer', peer, 'node', node)
end
"""

# KEYS: room peers set, room conns hash, rooms set, this node's peers set, events stream,
#       room resume hash
# ARGV: room, peer, owner (node/conn), channel, fresh envelope, takeover envelope,
#       limit (0: none), node-peers key prefix, node-peers key suffix,
#       events max length (0: no events), resume token digest ('': none), backlog key
# Returns the members before the join (nil when the room is full). A takeover ends any
# backlog the older connection had: the new one starts afresh.
JOIN = Script(
    "join",
    _EVENT + """
local members = redis.call('SMEMBERS', KEYS[1])
local present = redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1
local limit = tonumber(ARGV[7])
if limit > 0 and not present and #members >= limit then return false end
local membership = ARGV[1] .. '/' .. ARGV[2]
local previous = redis.call('HGET', KEYS[2], ARGV[2])
if previous then
  local node = string.match(previous, '^(.*)/[^/]*$')
  if node then redis.call('SREM', ARGV[8] .. node .. ARGV[9], membership) end
end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], membership)
if ARGV[11] ~= '' then redis.call('HSET', KEYS[6], ARGV[2], ARGV[11])
else redis.call('HDEL', KEYS[6], ARGV[2]) end
redis.call('DEL', ARGV[12])
if present then
  redis.call('PUBLISH', ARGV[4], ARGV[6])
else
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  local maxlen = tonumber(ARGV[10] or '0')
  if maxlen > 0 then
    if #members == 0 then event(maxlen, 'room-started', ARGV[1], ARGV[2], ARGV[3]) end
    event(maxlen, 'peer-joined', ARGV[1], ARGV[2], ARGV[3])
  end
end
return members
""",
)

# KEYS: room peers set, room conns hash, rooms set, the owner node's peers set, events stream,
#       room resume hash, the owner node's liveness key
# ARGV: room, peer, owner (node/conn), channel, leave envelope, announce if absent (0/1),
#       events max length (0: no events), reaping (0/1), backlog key
# With ARGV[8] = 1 (the reaper) nothing happens if the owner node is alive again (it may be
# re-creating this very membership). A removed membership takes its resume token and
# backlog with it.
# Returns 1 if the leave was published: `owner` owned the membership (now removed), or
# nobody owns it and ARGV[6] is 1. Returns 0 if another connection owns it.
LEAVE = Script(
    "leave",
    _EVENT + """
if ARGV[8] == '1' and redis.call('EXISTS', KEYS[7]) == 1 then return 0 end
local current = redis.call('HGET', KEYS[2], ARGV[2])
local removed = current == ARGV[3]
if removed then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('SREM', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[6], ARGV[2])
  redis.call('DEL', ARGV[9])
elseif current or ARGV[6] ~= '1' then
  return 0
end
redis.call('SREM', KEYS[4], ARGV[1] .. '/' .. ARGV[2])
local empty = redis.call('EXISTS', KEYS[1]) == 0
if empty then redis.call('SREM', KEYS[3], ARGV[1]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
local maxlen = tonumber(ARGV[7] or '0')
if removed and maxlen > 0 then
  event(maxlen, 'peer-left', ARGV[1], ARGV[2], ARGV[3])
  if empty then event(maxlen, 'room-finished', ARGV[1], ARGV[2], ARGV[3]) end
end
return 1
""",
)

# KEYS: room peers set, room conns hash, rooms set, this node's peers set, events stream,
#       room resume hash (unused)
# ARGV: room, peer, owner (node/conn), channel, join envelope, events max length
# After an outage: re-create the membership if nobody owns it ('added', published),
# keep it if `owner` still does ('kept'), or report that another connection took it.
REJOIN = Script(
    "rejoin",
    _EVENT + """
local current = redis.call('HGET', KEYS[2], ARGV[2])
if current and current ~= ARGV[3] then return 'taken' end
local was_empty = redis.call('EXISTS', KEYS[1]) == 0
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1] .. '/' .. ARGV[2])
if current then return 'kept' end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
local maxlen = tonumber(ARGV[6] or '0')
if maxlen > 0 then
  if was_empty then event(maxlen, 'room-started', ARGV[1], ARGV[2], ARGV[3]) end
  event(maxlen, 'peer-joined', ARGV[1], ARGV[2], ARGV[3])
end
return 'added'
""",
)

# KEYS: room peers set; ARGV: channel, sync envelope head (msgpack, see envelope.py)
# Publishes the room's members as a sync envelope, in channel order. Peer ids are at most
# 64 bytes, so each is a msgpack fixstr or str8; the array header is fixarray or array16.
SYNC = Script(
    "sync",
    """
local members = redis.call('SMEMBERS', KEYS[1])
local n = #members
local parts = {ARGV[2]}
if n < 16 then
  parts[2] = string.char(0x90 + n)
else
  parts[2] = string.char(0xdc, math.floor(n / 256), n % 256)
end
for i, m in ipairs(members) do
  if #m < 32 then parts[#parts + 1] = string.char(0xa0 + #m) .. m
  else parts[#parts + 1] = string.char(0xd9, #m) .. m end
end
redis.call('PUBLISH', ARGV[1], table.concat(parts))
return n
""",
)

# KEYS: room peers set, room conns hash, rooms set, this node's peers set, events stream,
#       room resume hash
# ARGV: room, peer, new owner (node/conn), channel, token digest, new token digest,
#       resume envelope, node-peers key prefix, node-peers key suffix, node channel prefix,
#       node channel suffix
# Contract §6: if the membership exists and holds this token digest, the new connection
# owns it (the node index moves with it), the new digest replaces the old, and the resume
# envelope is published; the old owner's node channel is asked whether it still listens.
# Returns {old owner node, listeners of its channel, members} or nil.
RESUME = Script(
    "resume",
    """
local current = redis.call('HGET', KEYS[2], ARGV[2])
if not current or redis.call('HGET', KEYS[6], ARGV[2]) ~= ARGV[5] then return false end
local node = string.match(current, '^(.*)/[^/]*$') or ''
local membership = ARGV[1] .. '/' .. ARGV[2]
redis.call('SREM', ARGV[8] .. node .. ARGV[9], membership)
redis.call('SADD', KEYS[4], membership)
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[6], ARGV[2], ARGV[6])
redis.call('PUBLISH', ARGV[4], ARGV[7])
local listening = redis.call('PUBLISH', ARGV[10] .. node .. ARGV[11], ARGV[2])
return {node, listening, redis.call('SMEMBERS', KEYS[1])}
""",
)

# KEYS: backlog list; ARGV: expiry (ms), frames...
STASH = Script(
    "stash",
    """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
""",
)

# KEYS: backlog list. Returns its frames, and deletes it.
TAKE = Script(
    "take",
    """
local frames = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return frames
""",
)

ALL = (JOIN, LEAVE, REJOIN, SYNC, RESUME, STASH, TAKE)


async def load_all(client: Redis) -> None:
    """Load every script, so that EVALSHA finds them (after a start or a Redis restart)."""
    for script in ALL:
        await client.script_load(script.source)
