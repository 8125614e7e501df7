-- Counts devices at one stage of a push, each once: the dedup set remembers who was counted, the counts
-- hash holds the figures that outlive it (total, per platform, arrival latency buckets, per day).
-- KEYS[1] dedup set, KEYS[2] counts hash, KEYS[3] the push's whole-push dedup set of the stage (what
-- every message used before counting went per message; KEYS[1] itself for a whole-push count): a device
-- in it counts as counted, so that nothing counts twice across that upgrade. It is only read.
-- ARGV[1] stage field ('s', 'a' or 'c'), ARGV[2] dedup ttl ms,
-- ARGV[3] UTC day number, ARGV[4..] triples: token, platform number, latency bucket ('' when not measured).
-- Returns { devices that were new, the push's count at this stage for that day after the call }.
local stage = ARGV[1]
local added = 0
local platforms = {}
local buckets = {}
local legacy = KEYS[3] ~= KEYS[1]
for i = 4, #ARGV, 3 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 and not (legacy and redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 1) then
    added = added + 1
    local platform = ARGV[i + 1]
    platforms[platform] = (platforms[platform] or 0) + 1
    local bucket = ARGV[i + 2]
    if bucket ~= '' then
      buckets[bucket] = (buckets[bucket] or 0) + 1
    end
  end
end
if #ARGV >= 4 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local dayField = 'd' .. ARGV[3] .. ':' .. stage
if added > 0 then
  redis.call('HINCRBY', KEYS[2], stage, added)
  for platform, n in pairs(platforms) do
    redis.call('HINCRBY', KEYS[2], stage .. platform, n)
  end
  for bucket, n in pairs(buckets) do
    redis.call('HINCRBY', KEYS[2], 'l' .. bucket, n)
  end
  return { added, redis.call('HINCRBY', KEYS[2], dayField, added) }
end
return { 0, tonumber(redis.call('HGET', KEYS[2], dayField) or '0') }
