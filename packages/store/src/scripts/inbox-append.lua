-- Appends a message to a device's offline window. Members are an 8-byte big-endian double (expiry, ms)
-- followed by the encoded PushMessage; the score is the msg id.
-- KEYS[1] inbox sorted set, KEYS[2] last msg id.
-- ARGV[1] msg id, ARGV[2] expires-at ms, ARGV[3] member, ARGV[4] capacity, ARGV[5] now ms.
-- Returns {1, previous last msg id} when appended, {0, last msg id} when refused (msg id not above it).
local msgId = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if msgId <= last then
  return {0, last}
end
-- The window only ever grows in msg id order, whatever the order of racing appends.
redis.call('SET', KEYS[2], ARGV[1])

local now = tonumber(ARGV[5])
local capacity = tonumber(ARGV[4])
-- The window holds at most capacity + 1 members here, so reading it whole is cheap.
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if struct.unpack('>d', member) <= now then
    redis.call('ZREM', KEYS[1], member)
  end
end
if tonumber(ARGV[2]) > now then
  redis.call('ZADD', KEYS[1], msgId, ARGV[3])
end
if capacity < 1 then
  redis.call('DEL', KEYS[1])
else
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(capacity + 1))
end
-- An abandoned window disappears on its own once its last message expires.
local latest = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local expiresAt = struct.unpack('>d', member)
  if expiresAt > latest then
    latest = expiresAt
  end
end
if latest > 0 then
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', latest))
end
return {1, last}
