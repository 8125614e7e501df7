-- Registers a device, or refreshes the details of a registered one, atomically per token.
-- KEYS[1] device hash.
-- ARGV platform, app version, os version, locale, sdk version, credential hash, registered-at ms.
-- Returns {created 1|0, previous platform ('' when created), registered-at ms, account}.
local old = redis.call('HMGET', KEYS[1], 'p', 'r', 'a')
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'av', ARGV[2], 'ov', ARGV[3], 'lo', ARGV[4], 'sv', ARGV[5], 'ch', ARGV[6])
if not old[2] then
  redis.call('HSET', KEYS[1], 'r', ARGV[7], 'a', '')
  return {1, '', ARGV[7], ''}
end
-- A re-registration keeps when the device first registered and which account it is bound to.
return {0, old[1], old[2], old[3] or ''}
