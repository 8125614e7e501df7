-- Takes the next push id and message id of an app in one step.
-- KEYS[1] the app's id counters hash. Returns {push id, msg id}.
local push = redis.call('HINCRBY', KEYS[1], 'p', 1)
local msg = redis.call('HINCRBY', KEYS[1], 'm', 1)
return {push, msg}
