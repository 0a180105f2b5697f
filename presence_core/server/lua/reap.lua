-- reap: ARGV[5] timeout in ms. Every node whose last sign of life is older than the
-- timeout is taken as dead (see reap_node). Any node may run it; the second finds nothing.
if redis.call('GET', P .. 'epoch') ~= EPOCH then return cjson.encode({r = 'epoch'}) end
local dead = redis.call('ZRANGEBYSCORE', NODES, '-inf', '(' .. (AT - tonumber(ARGV[5])),
                        'WITHSCORES')
local nodes, made = {}, 0
for i = 1, #dead, 2 do
  if dead[i] ~= NODE then
    made = made + reap_node(dead[i], tonumber(dead[i + 1]))
    table.insert(nodes, dead[i])
  end
end
return cjson.encode({r = 'ok', reaped = nodes, transitions = made})
