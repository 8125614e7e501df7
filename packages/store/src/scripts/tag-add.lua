-- Adds tags to a device all-or-nothing against the per-device limit.
-- KEYS[1] tags set. ARGV[1] max per device, ARGV[2..] tags (distinct).
-- Returns {1, count after} when added, {0, count it would have had} when nothing changed.
local count = redis.call('SCARD', KEYS[1])
local fresh = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then
    fresh[#fresh + 1] = ARGV[i]
  end
end
local after = count + #fresh
if after > tonumber(ARGV[1]) then
  return {0, after}
end
for i = 1, #fresh, 500 do
  redis.call('SADD', KEYS[1], unpack(fresh, i, math.min(i + 499, #fresh)))
end
return {1, after}
