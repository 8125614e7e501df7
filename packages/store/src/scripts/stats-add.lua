-- Counts tokens for a push once each: the dedup set remembers who was counted, the counts hash holds
-- the figure that outlives it.
-- KEYS[1] dedup set, KEYS[2] counts hash. ARGV[1] counts field, ARGV[2] dedup ttl ms, ARGV[3..] tokens.
-- Returns how many tokens were new.
local added = 0
-- unpack() is bounded by the Lua stack: add in slices.
for i = 3, #ARGV, 500 do
  added = added + redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
if #ARGV >= 3 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if added > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], added)
end
return added
