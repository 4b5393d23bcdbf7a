-- One instance's heartbeat, and the fleet as Redis sees it (src/fleet/redis.rs,
-- `RedisLink::heartbeat`).
--
-- KEYS     beats (zset: instance -> ms of its last beat), info (hash: instance -> JSON),
--          suspensions (hash: partner -> JSON)
-- ARGV     instance, info JSON, alive_within in ms
-- Returns  {now_ms, {id, ms since its beat, info, ...}, {partner, suspension, ...},
--          {info this instance's name had before this beat, ms since that beat (-1: none)}}
local alive_within = tonumber(ARGV[3])
if alive_within == nil or alive_within ~= alive_within or alive_within < 0 then
  return redis.error_reply('ERR billgate heartbeat: bad arguments')
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- What was written under this name before: another process's info there, beaten lately, means
-- two instances share the name.
local before = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local before_at = redis.call('ZSCORE', KEYS[1], ARGV[1])
local before_since = -1
if before_at then
  before_since = now - tonumber(before_at)
  if before_since < 0 then
    before_since = 0
  end
end

redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])

-- Instances silent for ten minutes are forgotten, their info with them; in chunks, so a
-- long-dead fleet never overflows Lua's stack in `unpack`.
local forget_before = '(' .. string.format('%.0f', now - 600000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', forget_before)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', forget_before)
  for i = 1, #gone, 256 do
    redis.call('HDEL', KEYS[2], unpack(gone, i, math.min(i + 255, #gone)))
  end
end

local members = {}
local alive = redis.call('ZRANGEBYSCORE', KEYS[1],
  string.format('%.0f', now - alive_within), '+inf', 'WITHSCORES')
for i = 1, #alive, 2 do
  local id = alive[i]
  local since = now - tonumber(alive[i + 1])
  if since < 0 then
    since = 0
  end
  members[#members + 1] = id
  members[#members + 1] = since
  members[#members + 1] = redis.call('HGET', KEYS[2], id) or ''
end

return {now, members, redis.call('HGETALL', KEYS[3]), {before, before_since}}
