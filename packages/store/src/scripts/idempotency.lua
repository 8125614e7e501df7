-- An idempotency key of push calls: a hash {p holding push id, r encoded response once the call completed}
-- that expires IDEMPOTENCY_TTL_MS after it was claimed (later writes keep that expiry).
-- KEYS[1] the key's hash. ARGV[1] the operation, ARGV[2] the push id of the calling push call:
--   'claim'    ARGV[3] TTL (ms). Takes the key when free. Returns {1} when claimed, else {0, holder, response
--              (nil until completed)}.
--   'complete' ARGV[3] response bytes. Sets the response if ARGV[2] holds the key. Returns 1 if set, else 0.
--   'release'  Deletes the key if ARGV[2] holds it and it has no response. Returns 1 if deleted, else 0.
local op = ARGV[1]
if op == 'claim' then
  local held = redis.call('HMGET', KEYS[1], 'p', 'r')
  if held[1] then
    return {0, held[1], held[2]}
  end
  redis.call('HSET', KEYS[1], 'p', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1}
end
if redis.call('HGET', KEYS[1], 'p') ~= ARGV[2] then
  return 0
end
if op == 'complete' then
  redis.call('HSET', KEYS[1], 'r', ARGV[3])
  return 1
end
if op == 'release' then
  if redis.call('HEXISTS', KEYS[1], 'r') == 1 then
    return 0
  end
  redis.call('DEL', KEYS[1])
  return 1
end
return redis.error_reply('unknown idempotency operation ' .. tostring(op))
