-- Adds an occurrence of a scheduled push to a partition's schedule, unless it is there already with the
-- same fire time (claimed or not: a claim stays); an entry of the same occurrence with another fire time
-- is replaced. Members are '<access id>:<encoded push id>:<occurrence>:<fire at ms>'.
-- KEYS[1] due sorted set (score: fire time, or the end of the lease while claimed), KEYS[2] the same
-- members scored 0, for lexicographic lookups by push. ARGV[1] member, ARGV[2] fire at ms, ARGV[3] and
-- ARGV[4] the lexicographic range of the occurrence's members.
-- Returns 1 when added, 0 when it was there.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local others = redis.call('ZRANGE', KEYS[2], ARGV[3], ARGV[4], 'BYLEX')
if #others > 0 then
  redis.call('ZREM', KEYS[1], unpack(others))
  redis.call('ZREM', KEYS[2], unpack(others))
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
