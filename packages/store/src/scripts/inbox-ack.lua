-- Forgets acknowledged messages of a device's window. KEYS[1] inbox sorted set. ARGV msg ids.
local removed = 0
for i = 1, #ARGV do
  removed = removed + redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
end
return removed
