-- Writes a route unless the one stored belongs to a session opened later (a fence on opened_at): the
-- route write of a device's older session, delayed past its newer session's (a Redis reconnect, a busy
-- gateway), must not take the newer one's place. Equal times: the later write wins.
-- KEYS[1] route. ARGV[1] the value, '<opened_at ms>;<byte length>:<session id><node id>', ARGV[2] its
-- opened_at ms, ARGV[3] ttl ms. Returns 1 when written, 0 when a newer route is kept.
local current = redis.call('GET', KEYS[1])
if current then
  local openedAt = string.match(current, '^(%d+);')
  if openedAt and tonumber(openedAt) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
