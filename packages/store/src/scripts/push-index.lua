-- Indexes a push in its app's list and drops the entries past their retention (by the server's clock).
-- The index holds members '<created-at, 15 digits>:<push id length, 3 digits>:<push id>', all scored 0,
-- so that lexicographic ranges are creation-time ranges; the retention set holds the same members scored
-- by their retention deadline, which only ever moves later. Both expire with the latest deadline.
-- KEYS[1] index sorted set, KEYS[2] retention sorted set. ARGV[1] member, ARGV[2] retain-until ms,
-- ARGV[3] a member to remove (the push's previous entry) or ''.
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZADD', KEYS[2], 'GT', ARGV[2], ARGV[1])
if ARGV[3] ~= '' and ARGV[3] ~= ARGV[1] then
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[3])
end
local time = redis.call('TIME')
local now = string.format('%.0f', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000))
-- At most 1,000 per call, so that one save after a long quiet spell stays short; the next saves go on.
local gone = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE', 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
local latest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if latest[2] then
  local at = string.format('%.0f', tonumber(latest[2]))
  redis.call('PEXPIREAT', KEYS[1], at)
  redis.call('PEXPIREAT', KEYS[2], at)
end
return #gone
