-- Takes the due entries of a partition's schedule, earliest first, and hides them until their lease ends
-- (they become due again then, unless completed first).
-- KEYS[1] due sorted set. ARGV[1] now ms, ARGV[2] lease end ms, ARGV[3] most entries.
-- Returns the members taken.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
