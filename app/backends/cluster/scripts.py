"""Lua scripts for a Redis Cluster: each touches only the slot of one room.

The room's set, its conns hash and its channel share the `{R}` hash tag, so the part that
decides (membership and publishing, via SPUBLISH on the shard channel) is still one
atomic step and the channel stays an ordered log of the room. What lives on other slots
(`sig:rooms`, the node index, the events stream) is left to the caller, which the scripts
tell what changed (`cluster_steps.py` does the rest, in a crash-safe order).

KEYS for the membership scripts: room peers set, room conns hash; JOIN, LEAVE and RESUME
also take the room's resume hash and the peer's backlog list (contract §6).
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.backends.rediswire.scripts import STASH, SYNC, TAKE, Script

# KEYS: room peers set, room conns hash, room resume hash, the peer's backlog
# ARGV: peer, owner (node/conn), channel, fresh envelope, takeover envelope, limit (0: none),
#       resume token digest ('': none)
# Returns nil when the room is full, else {state, members before the join...} where state
# is 'first' (the room was empty), 'fresh' (a new member) or 'taken' (the peer id was a
# member already: another connection owned it and this one takes over). Either way the
# peer starts without a backlog, with this token.
JOIN = Script(
    "cluster-join",
    """
local members = redis.call('SMEMBERS', KEYS[1])
local present = redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1
local limit = tonumber(ARGV[6])
if limit > 0 and not present and #members >= limit then return false end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[7])
else redis.call('HDEL', KEYS[3], ARGV[1]) end
redis.call('DEL', KEYS[4])
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

# KEYS: room peers set, room conns hash, room resume hash, the peer's backlog
# ARGV: peer, owner (node/conn), channel, leave envelope, announce if absent (0/1)
# A removed membership takes its resume token and backlog with it.
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
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[4])
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


# KEYS: room peers set, room conns hash, room resume hash
# ARGV: peer, new owner (node/conn), channel, token digest, new token digest, resume envelope
# Contract §6, the room's part: if the membership holds this digest, the new connection owns
# it, the new digest replaces the old and the resume envelope goes out. Returns
# {old owner, members...} or nil. The node indexes and the old node's channel are the
# caller's (`ClusterBackend.resume`), in the journal's order.
RESUME = Script(
    "cluster-resume",
    """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if not current or redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[4] then return false end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
redis.call('SPUBLISH', ARGV[3], ARGV[6])
local members = redis.call('SMEMBERS', KEYS[1])
table.insert(members, 1, current)
return members
""",
)


def _sharded(script: Script) -> Script:
    """The same script, publishing on the room's shard channel."""
    assert "'PUBLISH'" in script.source
    return Script(f"cluster-{script.name}", script.source.replace("'PUBLISH'", "'SPUBLISH'"))


SYNC_SHARDED = _sharded(SYNC)

ALL = (JOIN, LEAVE, REJOIN, SYNC_SHARDED, RESUME, STASH, TAKE)  # the last two: one key


async def load_all(client: Redis | RedisCluster) -> None:
    """Load every script (on a `RedisCluster`, SCRIPT LOAD reaches every master)."""
    for script in ALL:
        await client.script_load(script.source)
