"""The Lua scripts of the Redis backends: each a read, a judgement and a write in one step.

Redis runs a script atomically (no other command runs meanwhile), so a relay
can never read a value, be overtaken by another relay's write, and then
overwrite it. Kept small: Redis serves nobody else while one runs.
"""

from __future__ import annotations

__all__ = ["ACQUIRE_SCRIPT", "PRUNE_SCRIPT", "PUT_SCRIPT", "RELEASE_SCRIPT"]

# KEYS[1] policy or DANE key; ARGV: codec bytes, the time that orders the
# writes (a policy's checked_at, a DANE state's evaluated_at), expires_at,
# EXPIREAT time. Returns 1 if written, 0 if the stored value is newer.
# Whatever else sits under the key (a hash without a readable `c`, another
# type) is not a value of ours and is replaced.
PUT_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then
  local stored = tonumber(redis.call('HGET', KEYS[1], 'c'))
  if stored and stored > tonumber(ARGV[2]) then
    return 0
  end
elseif kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'c', ARGV[2], 'x', ARGV[3])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return 1
"""

# KEYS: policy or DANE keys; ARGV[1] older_than. Deletes the hashes whose
# value expired before it, re-reading each in the script so that a value
# another relay refreshed since the SCAN is kept. Returns how many were deleted.
PRUNE_SCRIPT = """
local deleted = 0
local limit = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'hash' then
    local expires = tonumber(redis.call('HGET', key, 'x'))
    if expires and expires < limit then
      deleted = deleted + redis.call('DEL', key)
    end
  end
end
return deleted
"""

# KEYS[1] lease key; ARGV: owner, TTL in milliseconds. Returns 1 if the
# owner holds the lease now (it was free, lapsed, or the owner's: renewed),
# else 0. Anything but a string under the key is not a lease of ours.
ACQUIRE_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
  end
elseif kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] lease key; ARGV[1] owner. Deletes the lease only if it is the owner's.
RELEASE_SCRIPT = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
