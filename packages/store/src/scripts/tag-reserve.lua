-- Reserves app-wide tag counts before a device step adds tags, refusing the whole call when it could
-- raise the app's distinct tags above the limit. Counts of tags already in use only grow; a tag not in
-- use becomes one more distinct tag. Reservations count as use until released, so concurrent calls can
-- never both take the last free place.
-- KEYS[1] counts hash (tag -> devices). ARGV[1] most distinct tags, ARGV[2..] tag, devices pairs
-- (distinct tags).
-- Returns {1, distinct after} when reserved, {0, distinct it would have} when refused (nothing written).
local distinct = redis.call('HLEN', KEYS[1])
local fresh = 0
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    fresh = fresh + 1
  end
end
if fresh > 0 and distinct + fresh > tonumber(ARGV[1]) then
  return {0, distinct + fresh}
end
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {1, distinct + fresh}
