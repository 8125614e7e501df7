-- Carries pushes' per-day counts into the app's figures of that day. Each push's count is carried as an
-- absolute value, remembered per push: a replay carries nothing, a late smaller value (calls overtaking
-- each other) nothing either, and a value the push script counted before a crash is carried by the
-- replay. Exact without the two slots (push, app) sharing a script.
-- KEYS[1] day figures hash (p pushes, s sent, a arrived, c clicked), KEYS[2] carried values hash
-- (<stage><push id> -> count). ARGV[1] expiry of KEYS[1] (unix ms), ARGV[2] expiry of KEYS[2],
-- ARGV[3..] triples: stage field, push id, the push's count at that stage for the day.
local changed = false
for i = 3, #ARGV, 3 do
  local stage = ARGV[i]
  local field = stage .. ARGV[i + 1]
  local now = tonumber(ARGV[i + 2])
  local before = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  if now > before then
    redis.call('HSET', KEYS[2], field, now)
    redis.call('HINCRBY', KEYS[1], stage, now - before)
    -- A push counts on each day it was first sent to a device.
    if stage == 's' and before == 0 then
      redis.call('HINCRBY', KEYS[1], 'p', 1)
    end
    changed = true
  end
end
if changed then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
return changed and 1 or 0
