-- Appends an entry to an app's broadcast log. Log members are the msg id and the expiry as 8-byte
-- big-endian doubles followed by the entry's data (the msg id keeps members unique whatever the data);
-- the score is the msg id. The expiry index holds the members' first 8 bytes scored by expiry, so that
-- expired entries are found without reading the log.
-- KEYS[1] log sorted set, KEYS[2] expiry index sorted set, KEYS[3] head (highest msg id ever appended).
-- ARGV[1] msg id, ARGV[2] expires-at ms, ARGV[3] member, ARGV[4] max entries, ARGV[5] now ms.
-- Returns {1, previous head} when appended, {0, head} when refused (msg id not above the head).
local head = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[1]) <= head then
  return {0, head}
end
-- The head never expires: it chains the app's broadcasts for as long as the app exists.
redis.call('SET', KEYS[3], ARGV[1])

-- Expired entries go first, so that they do not take places under the cap. (Same as broadcast-since.lua.)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
for _, id in ipairs(expired) do
  -- '%.0f', not tostring: Lua prints numbers with 14 significant digits only.
  local score = string.format('%.0f', struct.unpack('>d', id))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], score, score)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
end

if tonumber(ARGV[2]) > tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], string.sub(ARGV[3], 1, 8))
end

-- Usually one entry over the cap (the one just added), so reading the trimmed members is cheap.
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if excess > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
    redis.call('ZREM', KEYS[2], string.sub(member, 1, 8))
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
end

-- The log of an app that stops broadcasting disappears on its own once its last entry expires.
local latest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if latest[2] then
  local at = string.format('%.0f', math.ceil(tonumber(latest[2])))
  redis.call('PEXPIREAT', KEYS[1], at)
  redis.call('PEXPIREAT', KEYS[2], at)
end
return {1, head}
