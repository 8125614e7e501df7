-- Reads an app's broadcast log (layout in broadcast-append.lua): the newest `limit` entries with a msg id
-- above `after`, after dropping the expired ones (each entry is dropped once, so this stays cheap; without
-- it, entries expired since the last append would have to be read and skipped on every call).
-- KEYS[1] log sorted set, KEYS[2] expiry index sorted set, KEYS[3] head.
-- ARGV[1] after msg id, ARGV[2] now ms, ARGV[3] limit (an integer >= 0).
-- Returns {head, member...}, members oldest first.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
for _, id in ipairs(expired) do
  -- '%.0f', not tostring: Lua prints numbers with 14 significant digits only.
  local score = string.format('%.0f', struct.unpack('>d', id))
  redis.call('ZREMRANGEBYSCORE', KEYS[1], score, score)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
end

local result = {tonumber(redis.call('GET', KEYS[3]) or '0')}
if tonumber(ARGV[3]) >= 1 then
  local newest = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[3])
  for i = #newest, 1, -1 do
    result[#result + 1] = newest[i]
  end
end
return result
