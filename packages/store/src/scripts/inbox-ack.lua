-- Forgets acknowledged messages of a device's window (see inbox-append.lua for the layout); an
-- acknowledged message is never counted as dropped. KEYS[1] inbox sorted set, KEYS[2] meta hash.
-- ARGV msg ids.
local removed = 0
for i = 1, #ARGV do
  removed = removed + redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return removed
