-- Deletes a device record and returns what it held (flat field/value list), nil when there was none.
-- KEYS[1] device hash. ARGV[1] the index of the registration to remove ('' for whichever): a record of
-- another index (a newer registration of the token, or one from before indexes existed, -1) is left alone
-- and nil returned, so that a late removal never deletes a registration it did not read.
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return false
end
if ARGV[1] ~= nil and ARGV[1] ~= '' then
  local index = -1
  for i = 1, #fields, 2 do
    if fields[i] == 'x' then
      index = tonumber(fields[i + 1])
    end
  end
  if index ~= tonumber(ARGV[1]) then
    return false
  end
end
redis.call('DEL', KEYS[1])
return fields
