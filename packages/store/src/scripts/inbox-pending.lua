-- Reads a device's offline window and takes its dropped count (see inbox-append.lua for the layout).
-- Expired entries leave the window here and are counted as dropped; the count is reset.
-- KEYS[1] inbox sorted set, KEYS[2] last msg id, KEYS[3] meta hash. ARGV[1] after msg id, ARGV[2] now ms,
-- ARGV[3] '1' when the device processed everything up to the after msg id: the members at or below it
-- then leave the window and are returned too (their acks were lost).
-- Returns {last msg id, dropped, n, n members at or below after (taken), members above after, oldest
-- first...}.
local after = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local dropped = 0
local meta = redis.call('HGETALL', KEYS[3])
for i = 1, #meta, 2 do
  local id, value = meta[i], meta[i + 1]
  if id == 'd' then
    dropped = dropped + tonumber(value)
  else
    local sep = string.find(value, ':', 1, true)
    -- Counted even when its payload already vanished with the sorted set's TTL.
    if tonumber(string.sub(value, 1, sep - 1)) <= now then
      redis.call('ZREMRANGEBYSCORE', KEYS[1], id, id)
      redis.call('HDEL', KEYS[3], id)
      dropped = dropped + 1
    end
  end
end
redis.call('HDEL', KEYS[3], 'd')
local processed = ARGV[3] == '1'
local taken = {}
local pending = {}
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local member = members[i]
  local id = members[i + 1]
  if struct.unpack('>d', member) <= now then
    -- Only members without meta (stored before it existed) are left to expire here, uncounted.
    redis.call('ZREM', KEYS[1], member)
  elseif tonumber(id) > after then
    table.insert(pending, member)
  elseif processed then
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[3], id)
    table.insert(taken, member)
  end
end
local result = {tonumber(redis.call('GET', KEYS[2]) or '0'), dropped, #taken}
for _, member in ipairs(taken) do
  table.insert(result, member)
end
for _, member in ipairs(pending) do
  table.insert(result, member)
end
return result
