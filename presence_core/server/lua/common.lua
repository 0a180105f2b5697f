-- The prelude of every cluster script (prepended when the script is loaded).
-- ARGV[1] epoch, ARGV[2] node id, ARGV[3] now in ms (the node's database clock),
-- ARGV[4] the stream's approximate MAXLEN; each script's own arguments follow.
-- Keys are computed here (one Redis, not Redis Cluster): prefix "presence:".
local P = 'presence:'
local EPOCH, NODE, AT, MAXLEN = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local OFFLINE_TTL = 3600000 -- an offline user's hash is kept an hour, for status queries
local PRESENT = P .. 'present'
local NODES = P .. 'nodes'
local EVENTS = P .. 'events'

-- nil when this node may act; else the marker the node must handle first
local function guard()
  if redis.call('GET', P .. 'epoch') ~= EPOCH then return 'epoch' end
  if not redis.call('ZSCORE', NODES, NODE) then return 'reaped' end
  return nil
end

local function num(value)
  return tonumber(value) or 0
end

-- The one place a transition is made: dated strictly after the user's previous one,
-- stored in the user's hash, appended to the stream. Returns the entry id and time.
local function transition(key, ukey, status, at, reason, inferred)
  local last = num(redis.call('HGET', ukey, 'last_change'))
  if at <= last then at = last + 1 end
  redis.call('HSET', ukey, 'last_change', at, 'status', status)
  if status == 'offline' then
    redis.call('HSET', ukey, 'last_seen', at, 'n', 0)
    redis.call('HDEL', ukey, 'left_at')
    redis.call('SREM', PRESENT, key)
    redis.call('PEXPIRE', ukey, OFFLINE_TTL)
  else
    redis.call('HSET', ukey, 'since', at)
    if num(redis.call('HGET', ukey, 'last_seen')) < at then
      redis.call('HSET', ukey, 'last_seen', at)
    end
  end
  local h = redis.call('HMGET', ukey, 'wire', 'type', 'name', 'team')
  local fields = {'user', key, 'status', status, 'at', at, 'reason', reason,
                  'inferred', inferred and '1' or '0', 'epoch', EPOCH, 'wire', h[1] or 'null'}
  if h[2] then table.insert(fields, 'type'); table.insert(fields, h[2]) end
  if h[3] then table.insert(fields, 'name'); table.insert(fields, h[3]) end
  if h[4] then table.insert(fields, 'team'); table.insert(fields, h[4]) end
  local id = redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*', unpack(fields))
  return id, at
end

-- The answer of a script about one user: its state as the cluster now has it.
local function reply(kind, ukey, key, id)
  local h = redis.call('HMGET', ukey, 'status', 'since', 'last_change', 'wire', 'type',
                       'name', 'team', 'last_seen', 'n')
  return cjson.encode({r = kind, id = id, user = key,
                       present = redis.call('SISMEMBER', PRESENT, key) == 1,
                       status = h[1] or nil, since = h[2] or nil, lc = h[3] or nil,
                       wire = h[4] or nil, type = h[5] or nil, name = h[6] or nil,
                       team = h[7] or nil, last_seen = h[8] or nil, n = h[9] or nil})
end

-- Store the names given (a JSON object of type/name/team, absent = unchanged).
local function set_names(ukey, wire, names_json)
  if wire and wire ~= '' then redis.call('HSET', ukey, 'wire', wire) end
  if names_json and names_json ~= '' then
    for field, value in pairs(cjson.decode(names_json)) do
      if value ~= cjson.null then redis.call('HSET', ukey, field, value) end
    end
  end
end

-- Add connection sid of node to user key; true when the user had no connection.
local function add_conn(node, sid, key, ukey, live)
  redis.call('HSET', P .. 'node:' .. node, sid, key)
  local field = 'c:' .. node .. ':' .. sid
  if redis.call('HSETNX', ukey, field, live) == 1 then
    redis.call('HINCRBY', ukey, 'n', 1)
  else
    redis.call('HSET', ukey, field, live)
  end
  redis.call('PERSIST', ukey)
  return redis.call('SISMEMBER', PRESENT, key) == 0
end

-- Take every connection of a dead node; users left with none go offline, dated at the
-- node's last sign of life (never before their status began), reason node_down.
local function reap_node(node, life)
  local nkey = P .. 'node:' .. node
  local conns = redis.call('HGETALL', nkey)
  local made = 0
  for i = 1, #conns, 2 do
    local sid, key = conns[i], conns[i + 1]
    local ukey = P .. 'user:' .. key
    if redis.call('HDEL', ukey, 'c:' .. node .. ':' .. sid) == 1 then
      local n = redis.call('HINCRBY', ukey, 'n', -1)
      if n <= 0 and redis.call('SISMEMBER', PRESENT, key) == 1 then
        local since = num(redis.call('HGET', ukey, 'since'))
        transition(key, ukey, 'offline', math.max(life, since), 'node_down', false)
        made = made + 1
      end
    end
  end
  redis.call('DEL', nkey)
  redis.call('ZREM', NODES, node)
  return made
end
