-- Deletes a route only while it still belongs to the given session (compare-and-delete).
-- KEYS[1] route. ARGV[1] the value's session prefix, '<byte length>:<session id>'.
-- The value starts with '<opened_at ms>;' (routes written before it existed do not: both are read).
local value = redis.call('GET', KEYS[1])
if value then
  local session = string.match(value, '^%d+;(.*)$') or value
  if string.sub(session, 1, #ARGV[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
