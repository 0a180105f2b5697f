-- part: ARGV[5] sid, ARGV[6] user key, ARGV[7] reason, ARGV[8] "1" when the time is not
-- known (inferred). The connection no longer counts
-- (since AT); when it was the user's last, the user goes offline at the latest moment a
-- connection of theirs stopped counting (never before the status began).
local bad = guard()
if bad then return cjson.encode({r = bad}) end
local sid, key, reason = ARGV[5], ARGV[6], ARGV[7]
local ukey = P .. 'user:' .. key
redis.call('HDEL', P .. 'node:' .. NODE, sid)
if redis.call('HDEL', ukey, 'c:' .. NODE .. ':' .. sid) == 0 then
  return reply('g', ukey, key) -- it did not count (taken already): nothing changes
end
local n = redis.call('HINCRBY', ukey, 'n', -1)
local left = math.max(num(redis.call('HGET', ukey, 'left_at')), AT)
redis.call('HSET', ukey, 'left_at', left)
if n > 0 or redis.call('SISMEMBER', PRESENT, key) == 0 then
  return reply('n', ukey, key)
end
local since = num(redis.call('HGET', ukey, 'since'))
local id = transition(key, ukey, 'offline', math.max(left, since), reason, ARGV[8] == '1')
return reply('t', ukey, key, id)
