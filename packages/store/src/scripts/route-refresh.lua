-- Extends a route's expiry while it still belongs to the given session (compare-and-pexpire), and writes
-- it back when there is none (a live session that lost its route gets it back); another session's route
-- is left alone.
-- KEYS[1] route. ARGV[1] the value's session prefix, '<byte length>:<session id>', ARGV[2] ttl ms,
-- ARGV[3] the whole value to write back. The value starts with '<opened_at ms>;' (routes written before
-- it existed do not: both are read).
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
  return 2
end
local session = string.match(value, '^%d+;(.*)$') or value
if string.sub(session, 1, #ARGV[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
