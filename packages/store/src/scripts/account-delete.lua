-- Removes a token from an account index unless a newer bind (higher version) put it there again.
-- KEYS[1] account index hash. ARGV[1] token, ARGV[2] bind version the caller's view is based on.
-- Returns 1 when removed.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
