-- Binds a device to an account ('' unbinds) under a bind version from the app's counter.
-- KEYS[1] device hash. ARGV[1] account, ARGV[2] bind version.
-- Returns nil when the device is not registered; {0, previous account} when bound; {1, ''} when a bind
-- with a higher version already landed (the caller takes a new version and tries again).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local current = redis.call('HMGET', KEYS[1], 'a', 'bv')
if tonumber(current[2] or '0') >= tonumber(ARGV[2]) then
  return {1, ''}
end
redis.call('HSET', KEYS[1], 'a', ARGV[1], 'bv', ARGV[2])
return {0, current[1] or ''}
