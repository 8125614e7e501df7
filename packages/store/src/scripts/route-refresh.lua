-- Extends a route's expiry only while it still belongs to the given session (compare-and-pexpire).
-- KEYS[1] route. ARGV[1] the value's session prefix, '<byte length>:<session id>', ARGV[2] ttl ms.
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
