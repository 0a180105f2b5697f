-- register: ARGV[1] the epoch to create if none exists, ARGV[5] "fresh" when this is a
-- new process (an earlier process of the same node id left connections: they are
-- reaped now, as a dead node's). Creates the epoch if missing; the node is alive at AT.
-- Returns {epoch, created, reaped}.
local created = false
local epoch = redis.call('GET', P .. 'epoch')
if not epoch then
  epoch = EPOCH
  redis.call('SET', P .. 'epoch', epoch)
  created = true
end
EPOCH = epoch
local reaped = 0
local life = redis.call('ZSCORE', NODES, NODE)
if ARGV[5] == 'fresh' and (life or redis.call('EXISTS', P .. 'node:' .. NODE) == 1) then
  reaped = reap_node(NODE, num(life))
end
redis.call('ZADD', NODES, AT, NODE)
return cjson.encode({r = 'ok', epoch = epoch, created = created, reaped = reaped,
                     nodes = redis.call('ZCARD', NODES)})
