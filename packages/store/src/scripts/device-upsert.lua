-- Registers a device, or refreshes the details of a registered one, atomically per token. A record is
-- never written without a device index: a new device (or a record that lacks one) needs a candidate from
-- the app's counter, which the caller takes only when this script asks for it.
-- KEYS[1] device hash.
-- ARGV platform, app version, os version, locale, sdk version, credential hash, registered-at ms,
-- candidate index ('' for none).
-- Returns {2} when an index is needed and none was given (nothing written); otherwise
-- {created 1|0, previous platform ('' when created), registered-at ms, account, index}.
local old = redis.call('HMGET', KEYS[1], 'p', 'r', 'a', 'x')
local index = old[4]
if not index then
  if ARGV[8] == '' then
    return {2}
  end
  index = ARGV[8]
  redis.call('HSET', KEYS[1], 'x', index)
end
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'av', ARGV[2], 'ov', ARGV[3], 'lo', ARGV[4], 'sv', ARGV[5], 'ch', ARGV[6])
if not old[2] then
  redis.call('HSET', KEYS[1], 'r', ARGV[7], 'a', '')
  return {1, '', ARGV[7], '', index}
end
-- A re-registration keeps when the device first registered, which account it is bound to and its index.
return {0, old[1], old[2], old[3] or '', index}
