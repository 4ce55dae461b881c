"""Lua scripts for a Redis Cluster: each touches only the slot of one room.

The room's set, its conns hash and its channel share the `{R}` hash tag, so the part that
decides (membership and publishing, via SPUBLISH on the shard channel) is still one
atomic step and the channel stays an ordered log of the room. What lives on other slots
(`sig:rooms`, the node index, the events stream) is left to the caller, which the scripts
tell what changed (`cluster_steps.py` does the rest, in a crash-safe order).

KEYS for the membership scripts: room peers set, room conns hash.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.backends.rediswire.scripts import SYNC, Script

# ARGV: peer, owner (node/conn), channel, fresh envelope, takeover envelope, limit (0: none)
# Returns nil when the room is full, else {state, members before the join...} where state
# is 'first' (the room was empty), 'fresh' (a new member) or 'taken' (the peer id was a
# member already: another connection owned it and this one takes over).
JOIN = Script(
    "cluster-join",
    """
local members = redis.call('SMEMBERS', KEYS[1])
local present = redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1
local limit = tonumber(ARGV[6])
if limit > 0 and not present and #members >= limit then return false end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local state = 'taken'
if present then
  redis.call('SPUBLISH', ARGV[3], ARGV[5])
else
  redis.call('SPUBLISH', ARGV[3], ARGV[4])
  state = (#members == 0) and 'first' or 'fresh'
end
table.insert(members, 1, state)
return members
""",
)

# ARGV: peer, owner (node/conn), channel, leave envelope, announce if absent (0/1)
# Returns {outcome, room now empty (0/1), current owner or ''}; outcome is 'removed' (owner
# owned it: removed and published), 'announced' (nobody owns it and ARGV[5] is 1:
# published), 'absent' (nobody owns it: nothing published) or 'owned' (another connection
# owns it: nothing changed, the third item says which).
LEAVE = Script(
    "cluster-leave",
    """
local current = redis.call('HGET', KEYS[2], ARGV[1])
local outcome = 'absent'
if current == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[1], ARGV[1])
  outcome = 'removed'
elseif current then
  return {'owned', 0, current}
elseif ARGV[5] == '1' then
  outcome = 'announced'
end
if outcome ~= 'absent' then redis.call('SPUBLISH', ARGV[3], ARGV[4]) end
return {outcome, 1 - redis.call('EXISTS', KEYS[1]), ''}
""",
)

# ARGV: peer, owner (node/conn), channel, join envelope
# After an outage: {'added', was empty (0/1)} if nobody owned it (re-created, published),
# {'kept', 0} if `owner` still does, {'taken', 0} if another connection does.
REJOIN = Script(
    "cluster-rejoin",
    """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current and current ~= ARGV[2] then return {'taken', 0} end
local was_empty = 1 - redis.call('EXISTS', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
if current then return {'kept', 0} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SPUBLISH', ARGV[3], ARGV[4])
return {'added', was_empty}
""",
)


def _sharded(script: Script) -> Script:
    """The same script, publishing on the room's shard channel."""
    assert "'PUBLISH'" in script.source
    return Script(f"cluster-{script.name}", script.source.replace("'PUBLISH'", "'SPUBLISH'"))


SYNC_SHARDED = _sharded(SYNC)

ALL = (JOIN, LEAVE, REJOIN, SYNC_SHARDED)


async def load_all(client: Redis | RedisCluster) -> None:
    """Load every script (on a `RedisCluster`, SCRIPT LOAD reaches every master)."""
    for script in ALL:
        await client.script_load(script.source)
