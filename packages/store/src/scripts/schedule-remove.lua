-- Removes the entries of a partition's schedule within a lexicographic range: one entry (complete) or
-- every occurrence of a push (cancel).
-- KEYS[1] due sorted set, KEYS[2] lexicographic set. ARGV[1], ARGV[2] the range ('[a' .. '[a' for one).
-- Returns how many were removed.
local members = redis.call('ZRANGE', KEYS[2], ARGV[1], ARGV[2], 'BYLEX')
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
  redis.call('ZREM', KEYS[2], unpack(members))
end
return #members
