-- Adds a token to an account index, or raises its bind version; never lowers it, so a late step of an
-- older bind cannot undo a newer one.
-- KEYS[1] account index hash. ARGV[1] token, ARGV[2] bind version.
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
