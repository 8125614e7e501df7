-- Gives back app-wide tag counts (reservations not used, tags devices no longer hold). A tag whose count
-- reaches 0 is deleted and stops counting toward the app's distinct tags.
-- KEYS[1] counts hash. ARGV tag, devices pairs.
for i = 1, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], -tonumber(ARGV[i + 1])) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
