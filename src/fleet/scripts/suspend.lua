-- A fleet-wide suspension set or lifted (src/fleet/redis.rs, `RedisLink::set_suspension`). A
-- lifted suspension is remembered, so that an instance that was away, and kept it in its state
-- file, does not bring it back to the whole fleet when it returns. Suspensions are told apart
-- by their JSON (reason and start), not by any clock.
--
-- KEYS     suspensions (hash: partner -> JSON), lifted (hash: partner -> JSON of the last
--          suspension lifted)
-- ARGV     partner, 'set' or 'lift', the suspension's JSON
-- Returns  1 when done; 0 when the suspension to set is the one last lifted (stale: not set).
if ARGV[2] == 'lift' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  return 1
end
if ARGV[2] ~= 'set' then
  return redis.error_reply('ERR billgate suspend: bad arguments')
end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
