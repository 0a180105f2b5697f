-- join: ARGV[5] sid, ARGV[6] user key, ARGV[7] wire id (JSON), ARGV[8] names (JSON),
-- ARGV[9] reason (default userOnline), ARGV[10] "1" when the time is not known (inferred).
-- The connection counts for the user; a user who was not present comes online.
local bad = guard()
if bad then return cjson.encode({r = bad}) end
local sid, key = ARGV[5], ARGV[6]
local ukey = P .. 'user:' .. key
local coming = add_conn(NODE, sid, key, ukey, '1')
set_names(ukey, ARGV[7], ARGV[8])
if coming then
  redis.call('SADD', PRESENT, key)
  local reason = (ARGV[9] and ARGV[9] ~= '') and ARGV[9] or 'userOnline'
  local id = transition(key, ukey, 'online', AT, reason, ARGV[10] == '1')
  return reply('t', ukey, key, id)
end
if num(redis.call('HGET', ukey, 'last_seen')) < AT then
  redis.call('HSET', ukey, 'last_seen', AT)
end
return reply('n', ukey, key)
