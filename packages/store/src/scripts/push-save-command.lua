-- Keeps the command of a scheduled push in its hash, and extends the hash's expiry to the given deadline
-- if that is later (a loop is kept until after its end).
-- KEYS[1] push hash. ARGV[1] command bytes, ARGV[2] plan bytes, ARGV[3] retain-until ms.
-- Returns the push's created-at ms (its index entry), or -1 when there is no such push.
if redis.call('HEXISTS', KEYS[1], 'r') == 0 then
  return -1
end
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'q', ARGV[2])
local at = redis.call('PEXPIRETIME', KEYS[1])
if at < 0 or at < tonumber(ARGV[3]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
end
return tonumber(redis.call('HGET', KEYS[1], 't') or '-1')
