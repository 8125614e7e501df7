-- Sets status and target of a stored push; returns 0 (and creates nothing) when there is no such push.
-- KEYS[1] push hash. ARGV[1] status, ARGV[2] target.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'n', ARGV[2])
return 1
