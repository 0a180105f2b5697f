-- alive: the node's sign of life (every second). "reaped" if it was taken as dead.
local bad = guard()
if bad then return cjson.encode({r = bad}) end
if num(redis.call('ZSCORE', NODES, NODE)) < AT then
  redis.call('ZADD', NODES, 'XX', AT, NODE)
end
return cjson.encode({r = 'ok', nodes = redis.call('ZCARD', NODES)})
