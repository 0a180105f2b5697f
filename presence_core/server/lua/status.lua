-- status: ARGV[5] sid, ARGV[6] user key, ARGV[7] status, ARGV[8] reason, ARGV[9] "1"
-- when the time is not known (inferred). A present user's new status, from a
-- connection that counts for them.
local bad = guard()
if bad then return cjson.encode({r = bad}) end
local sid, key, status, reason = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ukey = P .. 'user:' .. key
if redis.call('HEXISTS', ukey, 'c:' .. NODE .. ':' .. sid) == 0
    or redis.call('SISMEMBER', PRESENT, key) == 0 then
  return reply('g', ukey, key)
end
if num(redis.call('HGET', ukey, 'last_seen')) < AT then
  redis.call('HSET', ukey, 'last_seen', AT)
end
if redis.call('HGET', ukey, 'status') == status then
  return reply('n', ukey, key)
end
local id = transition(key, ukey, status, AT, reason, ARGV[9] == '1')
return reply('t', ukey, key, id)
