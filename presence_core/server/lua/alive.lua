-- alive: the node's sign of life (every second). "reaped" if it was taken as dead.
-- ARGV[5] the node timeout (ms): answers how many nodes gave a sign of life within it.
local bad = guard()
if bad then return cjson.encode({r = bad}) end
if num(redis.call('ZSCORE', NODES, NODE)) < AT then
  redis.call('ZADD', NODES, 'XX', AT, NODE)
end
local within = AT - tonumber(ARGV[5] or '15000')
return cjson.encode({r = 'ok', nodes = redis.call('ZCOUNT', NODES, within, '+inf')})
