-- settle: ARGV[5] a JSON list of users this node's mirror had present when Redis lost
-- its data {user, wire, names, since, lc}; ARGV[6] the last moment (ms) the node knew
-- Redis was good. Once every live node had the time to restore its connections, a
-- user nobody restored (the new Redis has no trace of them) goes offline, inferred,
-- reason reconcile, dated at that moment (never before the status began). The first
-- node to settle a user decides; for the others the user exists and nothing happens.
local bad = guard()
if bad then return cjson.encode({r = bad}) end
local good = tonumber(ARGV[6])
local made = 0
for _, u in ipairs(cjson.decode(ARGV[5])) do
  local ukey = P .. 'user:' .. u.user
  if redis.call('EXISTS', ukey) == 0 then
    set_names(ukey, u.wire, u.names)
    redis.call('HSET', ukey, 'last_change', num(u.lc), 'since', num(u.since))
    transition(u.user, ukey, 'offline', math.max(good, num(u.since)), 'reconcile', true)
    made = made + 1
  end
end
return cjson.encode({r = 'ok', transitions = made})
