-- An app's broadcast rate gate. KEYS[1] gate string. ARGV[1] window ms (an integer >= 1).
-- Returns 0 when acquired (the key now lives for the window), else the ms until it can be acquired.
-- One script rather than SET NX then PTTL: between the two the key could expire and PTTL say -2.
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then
  -- A gate without an expiry (written by hand) would stay shut forever.
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return tonumber(ARGV[1])
end
-- The key can still exist in its very last millisecond (PTTL 0); the caller is told to wait at least 1.
return math.max(ttl, 1)
