-- Stores a push record with its mutable fields beside it, replacing a previous version but keeping the
-- command (c, q) and the scheduler's fence (x). The hash expires at its retention deadline, which only
-- ever moves later (saveCommand may have extended it for a loop); one already past deletes it at once.
-- KEYS[1] push hash. ARGV[1] record bytes, ARGV[2] status, ARGV[3] target, ARGV[4] msg id,
-- ARGV[5] occurrences, ARGV[6] failure, ARGV[7] created-at ms, ARGV[8] retain-until ms.
-- Returns the created-at ms of the previous version (-1 if none), whose index entry the caller moves.
local previous = tonumber(redis.call('HGET', KEYS[1], 't') or '-1')
redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2], 'n', ARGV[3], 'm', ARGV[4], 'o', ARGV[5],
  'f', ARGV[6], 't', ARGV[7])
local at = redis.call('PEXPIRETIME', KEYS[1])
if at < 0 or at < tonumber(ARGV[8]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[8])
end
return previous
