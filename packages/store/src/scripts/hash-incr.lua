-- Adds deltas to several fields of one hash at once, so that related counters never disagree.
-- KEYS[1] hash. ARGV field, delta, field, delta, ...
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
