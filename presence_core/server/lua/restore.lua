-- restore: ARGV[5] a JSON list of this node's connections, for a Redis that came back
-- empty: {sid, user, wire, names, status, since, lc} (status/since/lc: the user as the
-- node's mirror last had them present, absent when it did not). A user the new Redis
-- does not know takes the mirror's state without a transition; one the mirror did not
-- have present comes online, inferred (we did not see when), reason reconcile.
local bad = guard()
if bad then return cjson.encode({r = bad}) end
local made = 0
for _, c in ipairs(cjson.decode(ARGV[5])) do
  local ukey = P .. 'user:' .. c.user
  local coming = add_conn(NODE, c.sid, c.user, ukey, '1')
  set_names(ukey, c.wire, c.names)
  if coming then
    redis.call('SADD', PRESENT, c.user)
    if c.status and c.status ~= cjson.null then
      local lc = math.max(num(c.lc), num(redis.call('HGET', ukey, 'last_change')))
      redis.call('HSET', ukey, 'status', c.status, 'since', c.since, 'last_change', lc,
                 'last_seen', AT)
    else
      transition(c.user, ukey, 'online', AT, 'reconcile', true)
      made = made + 1
    end
  end
end
return cjson.encode({r = 'ok', transitions = made})
