-- The applier's fence for one occurrence of a scheduled push (PushStore.claimDelivery): the first log
-- entry of the occurrence to ask may apply it, while the push is SENDING at that occurrence; that entry
-- may apply it again later whatever the push's status since (a crash or a lost acknowledgement after
-- its record was updated: its SENT counts are published again).
-- KEYS[1] push hash. ARGV[1] the SENDING status, ARGV[2] occurrence, ARGV[3] the entry's msg id.
-- Field k: '<occurrence>:<msg id>' of the entry that claimed the push's latest claimed occurrence.
-- Returns 1 when this entry may apply it, 0 when not.
if redis.call('HEXISTS', KEYS[1], 'r') == 0 then
  return 0
end
local current = redis.call('HMGET', KEYS[1], 's', 'x', 'k')
local mine = ARGV[2] .. ':' .. ARGV[3]
if current[3] == mine then
  return 1
end
if tonumber(current[1] or '0') ~= tonumber(ARGV[1]) or tonumber(current[2] or '0') ~= tonumber(ARGV[2]) then
  return 0
end
if current[3] then
  local claimed = tonumber(string.match(current[3], '^(%d+):'))
  if claimed and claimed >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'k', mine)
return 1
