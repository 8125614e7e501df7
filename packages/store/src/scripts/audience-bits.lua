-- Sets or clears the bits of some devices in several bitmaps of one app's audience index at once.
-- KEYS bitmaps. ARGV[1] how many of the keys (the first ones) get the bits set; the others get them
-- cleared. ARGV[2] expire-at ms given to the keys set ('' for none). ARGV[3] '1' to delete a cleared key
-- left without any bit set (tag bitmaps: a tag nobody holds any more costs nothing). ARGV[4..] bit
-- offsets (device indexes).
local set = tonumber(ARGV[1])
for k = 1, #KEYS do
  if k <= set then
    for i = 4, #ARGV do
      redis.call('SETBIT', KEYS[k], ARGV[i], 1)
    end
    if ARGV[2] ~= '' then
      redis.call('PEXPIREAT', KEYS[k], ARGV[2])
    end
  -- Clearing a bit of a missing key would create a zero-filled string up to that offset.
  elseif redis.call('EXISTS', KEYS[k]) == 1 then
    for i = 4, #ARGV do
      redis.call('SETBIT', KEYS[k], ARGV[i], 0)
    end
    if ARGV[3] == '1' and redis.call('BITCOUNT', KEYS[k]) == 0 then
      redis.call('DEL', KEYS[k])
    end
  end
end
return 1
