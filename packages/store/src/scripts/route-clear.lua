-- Deletes a route only while it still belongs to the given session (compare-and-delete).
-- KEYS[1] route. ARGV[1] the value's session prefix, '<byte length>:<session id>'.
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #ARGV[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
