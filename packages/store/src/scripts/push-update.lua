-- Applies a patch to the mutable fields of a stored push, atomically, if its conditions hold; never
-- creates a push. Conditions: the current status is one of the expected ones (none given: any), the
-- stored firing occurrence (x) is the expected one (none given: any), and a new firing occurrence is above
-- the stored one (the scheduler's fence: an occurrence starts once).
-- KEYS[1] push hash. ARGV[1] expected statuses, comma-separated ('*' = any, '' = none), ARGV[2] expected
-- firing occurrence ('' = any), ARGV[3] new firing occurrence ('' = unchanged), ARGV[4..] field, value
-- pairs of the patch.
-- Returns {1 applied or 0 refused, status after (-1: no such push), firing occurrence after}.
if redis.call('HEXISTS', KEYS[1], 'r') == 0 then
  return {0, -1, 0}
end
local current = redis.call('HMGET', KEYS[1], 's', 'x')
local status = tonumber(current[1] or '0')
local firing = tonumber(current[2] or '0')
if ARGV[1] ~= '*' then
  local allowed = false
  for expected in string.gmatch(ARGV[1], '[^,]+') do
    if tonumber(expected) == status then
      allowed = true
    end
  end
  if not allowed then
    return {0, status, firing}
  end
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= firing then
  return {0, status, firing}
end
if ARGV[3] ~= '' then
  if tonumber(ARGV[3]) <= firing then
    return {0, status, firing}
  end
  firing = tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'x', ARGV[3])
end
if #ARGV > 3 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
end
return {1, tonumber(redis.call('HGET', KEYS[1], 's') or '0'), firing}
