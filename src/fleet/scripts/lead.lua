-- One role's leader in the fleet (src/fleet/redis.rs, `RedisLink::lead`): held by one instance
-- at a time, for `ttl` milliseconds from its last renewal.
--
-- KEYS[1]  the role's key
-- ARGV     instance, ttl (milliseconds)
-- Returns  1 when `instance` holds the role now (taken or renewed), 0 when another does.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
