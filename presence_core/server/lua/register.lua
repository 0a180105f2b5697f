-- register: ARGV[1] the epoch to create if none exists, ARGV[5] "fresh" when this is a
-- new process. Creates the epoch if missing; the node is alive at AT. Connections an
-- earlier process of the same node id left (it crashed, or was restarted) move to a
-- ghost node "ID~LIFE" that keeps that process's last sign of life: the reaper takes
-- them after the node timeout, as a dead node's, unless their users reconnect first
-- (a restart does not send everyone offline). Returns {epoch, created, ghost}.
local created = false
local epoch = redis.call('GET', P .. 'epoch')
if not epoch then
  epoch = EPOCH
  redis.call('SET', P .. 'epoch', epoch)
  created = true
end
EPOCH = epoch
local ghost = nil
local nkey = P .. 'node:' .. NODE
if ARGV[5] == 'fresh' and redis.call('EXISTS', nkey) == 1 then
  local life = num(redis.call('ZSCORE', NODES, NODE))
  ghost = NODE .. '~' .. life
  local conns = redis.call('HGETALL', nkey)
  for i = 1, #conns, 2 do
    local sid, key = conns[i], conns[i + 1]
    local ukey = P .. 'user:' .. key
    local value = redis.call('HGET', ukey, 'c:' .. NODE .. ':' .. sid)
    if value then
      redis.call('HDEL', ukey, 'c:' .. NODE .. ':' .. sid)
      redis.call('HSET', ukey, 'c:' .. ghost .. ':' .. sid, value)
    end
  end
  redis.call('RENAME', nkey, P .. 'node:' .. ghost)
  redis.call('ZADD', NODES, life, ghost)
end
redis.call('ZADD', NODES, AT, NODE)
return cjson.encode({r = 'ok', epoch = epoch, created = created, ghost = ghost,
                     nodes = redis.call('ZCARD', NODES)})
