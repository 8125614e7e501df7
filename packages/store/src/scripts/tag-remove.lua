-- Removes tags from a device; returns how many it has left. KEYS[1] tags set. ARGV tags.
for i = 1, #ARGV, 500 do
  redis.call('SREM', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return redis.call('SCARD', KEYS[1])
