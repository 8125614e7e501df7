-- Deletes a device record and returns what it held (flat field/value list), nil when there was none.
-- KEYS[1] device hash.
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return false
end
redis.call('DEL', KEYS[1])
return fields
