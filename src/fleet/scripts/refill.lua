-- One token bucket, refilled and drawn from in one step (src/fleet/redis.rs, `RedisLink::refill`).
--
-- KEYS[1]  the bucket: a hash {tokens = float, at = µs of Redis's clock when last written}
-- ARGV     per_second, burst, want, give_back, debt (decimal strings)
-- Returns  {granted (integer), tokens left (string)}
--
-- Time is Redis's own (TIME), one clock for the whole fleet. A missing bucket starts full.
-- Each argument a finite number >= 0 (`x ~= x` is NaN; `x - x ~= 0` is an infinity).
local n = {}
for i = 1, 5 do
  local x = tonumber(ARGV[i])
  if x == nil or x ~= x or x - x ~= 0 or x < 0 then
    return redis.error_reply('ERR billgate refill: bad arguments')
  end
  n[i] = x
end
local rate, burst, want, give_back, debt = n[1], n[2], n[3], n[4], n[5]

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil or tokens ~= tokens or at ~= at then
  tokens = burst
  at = now
end

local elapsed = now - at
if elapsed < 0 then
  elapsed = 0
end
tokens = math.min(burst, tokens + elapsed * rate / 1000000)
tokens = math.min(burst, tokens + give_back)
-- Debt (what instances spent on their shares, without a lease) empties the bucket but takes
-- it no lower: after an outage the fleet goes on at the rate, with neither a burst (the bucket
-- refilled meanwhile is spent by the debt) nor a dip (a bucket below empty would refuse
-- everyone until it climbed back).
tokens = math.max(0, tokens - debt)

local granted = math.min(want, math.floor(math.max(tokens, 0)))
tokens = tokens - granted

-- Numbers are formatted here: redis.call would write them with 14 digits, and `at` has 16.
local left = string.format('%.17g', tokens)
redis.call('HSET', KEYS[1], 'tokens', left, 'at', string.format('%.0f', now))

-- An idle bucket may vanish only once it would be full again anyway (it then starts full);
-- at least a minute, at most a year (a rate of 0 never refills).
local ttl = 60000
if rate > 0 then
  ttl = math.max(ttl, math.ceil(2 * burst / rate * 1000))
else
  ttl = 31536000000
end
ttl = math.min(ttl, 31536000000)
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))

return {granted, left}
