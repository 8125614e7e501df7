-- Counts the registered devices of one app matching an expression compiled to a postfix program over
-- bitmaps (audience-index-redis.ts), and how many of them are online, in one step.
-- KEYS[1] registered bitmap, KEYS[2] online bitmap, KEYS[3 .. 2 + ARGV[1]] bitmaps the program reads, the
-- rest temporaries for intermediate results (deleted before returning).
-- ARGV[1] number of bitmaps the program reads; ARGV[2..] the program, one instruction each:
--   k<i>  push KEYS[i]
--   &<n>  replace the top n entries by their AND       |<n>  ... by their OR
--   !     replace the top entry x by (registered AND NOT x), computed as registered XOR (registered AND x)
--         because BITOP NOT would stop at the length of x.
-- Returns {matched, online}.
local nextTemp = 3 + tonumber(ARGV[1])
local firstTemp = nextTemp
local function temp()
  local key = KEYS[nextTemp]
  nextTemp = nextTemp + 1
  return key
end
local stack = {}
for i = 2, #ARGV do
  local op = ARGV[i]
  local code = string.sub(op, 1, 1)
  if code == 'k' then
    stack[#stack + 1] = KEYS[tonumber(string.sub(op, 2))]
  elseif code == '&' or code == '|' then
    local n = tonumber(string.sub(op, 2))
    local dest = temp()
    local sources = {}
    for j = #stack - n + 1, #stack do
      sources[#sources + 1] = stack[j]
    end
    for _ = 1, n do
      stack[#stack] = nil
    end
    redis.call('BITOP', code == '&' and 'AND' or 'OR', dest, unpack(sources))
    stack[#stack + 1] = dest
  elseif code == '!' then
    local dest = temp()
    redis.call('BITOP', 'AND', dest, KEYS[1], stack[#stack])
    redis.call('BITOP', 'XOR', dest, KEYS[1], dest)
    stack[#stack] = dest
  else
    return redis.error_reply('unknown audience program instruction ' .. op)
  end
end
-- Only registered devices count: bits left at the index of an unregistered device never do.
local result = KEYS[1]
if stack[1] ~= KEYS[1] then
  result = temp()
  redis.call('BITOP', 'AND', result, KEYS[1], stack[1])
end
local matched = redis.call('BITCOUNT', result)
local online = 0
if matched > 0 then
  local connected = temp()
  redis.call('BITOP', 'AND', connected, result, KEYS[2])
  online = redis.call('BITCOUNT', connected)
end
for j = firstTemp, #KEYS do
  redis.call('DEL', KEYS[j])
end
return {matched, online}
