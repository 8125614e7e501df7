-- Appends a message to a device's offline window. Members of the sorted set are an 8-byte big-endian
-- double (expiry, ms) followed by the encoded PushMessage; the score is the msg id. The meta hash holds,
-- per member, `<expiry ms>:<collapse id>` under its msg id (what this script needs without decoding the
-- message), and `d`, the messages dropped since the last pending. It has no TTL: it outlives payloads that
-- vanish with the sorted set's TTL, so that their expiry is still counted.
-- KEYS[1] inbox sorted set, KEYS[2] last msg id, KEYS[3] meta hash.
-- ARGV[1] msg id, ARGV[2] expires-at ms, ARGV[3] member, ARGV[4] capacity, ARGV[5] now ms,
-- ARGV[6] collapse id ('' for none).
-- Returns {1, previous last msg id} when appended, {0, last msg id} when refused (msg id not above it).
local msgId = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if msgId <= last then
  return {0, last}
end
-- The window only ever grows in msg id order, whatever the order of racing appends.
redis.call('SET', KEYS[2], ARGV[1])

local now = tonumber(ARGV[5])
local capacity = math.max(tonumber(ARGV[4]), 0)
local collapse = ARGV[6]
local dropped = 0

-- The meta hash holds at most capacity + 1 entries and `d`, so reading it whole is cheap.
local meta = redis.call('HGETALL', KEYS[3])
for i = 1, #meta, 2 do
  local id, value = meta[i], meta[i + 1]
  if id ~= 'd' then
    local sep = string.find(value, ':', 1, true)
    local replaced = collapse ~= '' and string.sub(value, sep + 1) == collapse
    -- A collapsed entry is replaced by this message, even if expired: the device loses nothing.
    if replaced or tonumber(string.sub(value, 1, sep - 1)) <= now then
      redis.call('ZREMRANGEBYSCORE', KEYS[1], id, id)
      redis.call('HDEL', KEYS[3], id)
      if not replaced then
        dropped = dropped + 1
      end
    end
  end
end
-- Members without meta (stored before it existed) still expire, uncounted.
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if struct.unpack('>d', member) <= now then
    redis.call('ZREM', KEYS[1], member)
  end
end
if tonumber(ARGV[2]) > now then
  redis.call('ZADD', KEYS[1], msgId, ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. ':' .. collapse)
else
  dropped = dropped + 1
end
local excess = redis.call('ZCARD', KEYS[1]) - capacity
if excess > 0 then
  local evicted = redis.call('ZRANGE', KEYS[1], 0, excess - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
  for i = 2, #evicted, 2 do
    redis.call('HDEL', KEYS[3], evicted[i])
  end
  dropped = dropped + excess
end
if dropped > 0 then
  redis.call('HINCRBY', KEYS[3], 'd', dropped)
end
-- An abandoned window's payloads disappear on their own once its last message expires.
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
