-- The tag service's state of one device, changed atomically. The state belongs to one registration of the
-- token (one device index, `x`): a call for an older index is obsolete and writes nothing; a call for a
-- newer one first forgets the older registration's state, returning its tags as `dropped` so that the
-- caller gives back their app-wide counts.
--
-- The set holds user tags and attribute tags (members starting with 'pushd:', set by 'attributes': the
-- device's reported location). Attribute tags are not user tags: never counted (count, the per-device
-- limit), never reported as kept or removed by add / remove / set / clear, and left in place by set and
-- clear; the caller never names them in those operations.
--
-- KEYS[1] the device's tag set, KEYS[2] its meta hash:
--   x  device index the state belongs to       d   '1' once that registration unregistered (a marker
--   p  platform                                    that expires, making late events obsolete)
--   b  built-in value tags set in the index, '\n'-joined (registry refuses control characters in them)
--   ra at_ms of the registration event applied  s / sa / o  last connected session, its at_ms, online '1'
--   e / ea  the newest disconnect of a session not recorded when it came (events out of order), its at_ms
-- ARGV[1] operation, ARGV[2] the caller's device index, then per operation:
--   add        ARGV[3] most tags per device, ARGV[4..] tags (distinct)
--   remove     ARGV[4..] tags
--   set        ARGV[3] most tags per device, ARGV[4..] tags (distinct): replaces the set
--   clear      -
--   attributes ARGV[3] number n of prefixes, ARGV[4..3+n] prefixes, ARGV[4+n..] tags (distinct, each under
--              one of the prefixes): replaces the attribute tags under those prefixes
--   register   ARGV[3] the built-in tags the caller read ('\n'-joined, '' for none), ARGV[4] platform,
--              ARGV[5] built-in tags to store, ARGV[6] at_ms
--   presence   ARGV[3] session id, ARGV[4] at_ms, ARGV[5] '1' connected, '0' disconnected
--   unregister ARGV[3] ttl ms of the marker
--   list       (read only; ARGV[2] -1 for whatever registration)
-- Returns (list: the tags) status, count, #added, added..., #removed, removed..., #kept, kept...,
-- #dropped, dropped..., online (1|0), builtin ('\n'-joined), platform. Status 1 done; 0 refused by the
-- per-device limit (count: the tags the device would have had; the set is unchanged); -1 obsolete
-- (nothing written); 2 (register) the stored built-in tags are not the ones the caller read.
local op = ARGV[1]
local index = tonumber(ARGV[2])
local meta = redis.call('HMGET', KEYS[2], 'x', 'd')
local owner = tonumber(meta[1])
local dead = meta[2] == '1'

if op == 'list' then
  if dead or (index >= 0 and owner ~= nil and owner ~= index) then
    return {}
  end
  return redis.call('SMEMBERS', KEYS[1])
end

local dropped = {}
local function reply(status, count, added, removed, kept, online, builtin, platform)
  local out = {status, count}
  for _, list in ipairs({added, removed, kept, dropped}) do
    out[#out + 1] = #list
    for _, tag in ipairs(list) do
      out[#out + 1] = tag
    end
  end
  out[#out + 1] = online and 1 or 0
  out[#out + 1] = builtin or ''
  out[#out + 1] = platform or '0'
  return out
end

if owner ~= nil and (owner > index or (owner == index and dead)) then
  return reply(-1, 0, {}, {}, {})
end

-- unpack() is bounded by the Lua stack: write sets in slices.
local function sadd(tags)
  for i = 1, #tags, 500 do
    redis.call('SADD', KEYS[1], unpack(tags, i, math.min(i + 499, #tags)))
  end
end

local function srem(tags)
  for i = 1, #tags, 500 do
    redis.call('SREM', KEYS[1], unpack(tags, i, math.min(i + 499, #tags)))
  end
end

local function is_attribute(tag)
  return string.sub(tag, 1, 6) == 'pushd:'
end

-- The set's user tags (at most the per-device limit plus a few attribute tags: reading it is cheap).
local function user_tags()
  local tags = {}
  for _, tag in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if not is_attribute(tag) then
      tags[#tags + 1] = tag
    end
  end
  return tags
end

if op == 'unregister' then
  local tags = redis.call('SMEMBERS', KEYS[1])
  local held = redis.call('HMGET', KEYS[2], 'b', 'p')
  local removed = {}
  if owner == index then
    removed = tags
  else
    dropped = tags
    held = {false, false}
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[2], 'x', index, 'd', '1')
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return reply(1, 0, {}, removed, {}, false, held[1], held[2])
end

if owner == nil or owner < index then
  dropped = redis.call('SMEMBERS', KEYS[1])
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[2], 'x', index)
end

if op == 'add' or op == 'set' or op == 'remove' then
  local requested = {}
  for i = 4, #ARGV do
    requested[#requested + 1] = ARGV[i]
  end
  local added, removed, kept = {}, {}, {}
  if op == 'set' then
    if #requested > tonumber(ARGV[3]) then
      return reply(0, #requested, {}, {}, {})
    end
    local wanted = {}
    for _, tag in ipairs(requested) do
      wanted[tag] = true
    end
    local before = {}
    for _, tag in ipairs(user_tags()) do
      before[tag] = true
      if wanted[tag] then
        kept[#kept + 1] = tag
      else
        removed[#removed + 1] = tag
      end
    end
    for _, tag in ipairs(requested) do
      if not before[tag] then
        added[#added + 1] = tag
      end
    end
    -- Not DEL: the attribute tags stay.
    srem(removed)
    sadd(added)
    return reply(1, #requested, added, removed, kept)
  end
  for _, tag in ipairs(requested) do
    local member = redis.call('SISMEMBER', KEYS[1], tag) == 1
    if op == 'add' then
      if member then
        kept[#kept + 1] = tag
      else
        added[#added + 1] = tag
      end
    elseif member then
      removed[#removed + 1] = tag
    end
  end
  local count = #user_tags()
  if op == 'add' then
    if count + #added > tonumber(ARGV[3]) then
      return reply(0, count + #added, {}, {}, {})
    end
    sadd(added)
    return reply(1, count + #added, added, {}, kept)
  end
  srem(removed)
  return reply(1, count - #removed, {}, removed, {})
end

if op == 'clear' then
  local removed = user_tags()
  srem(removed)
  return reply(1, 0, {}, removed, {})
end

if op == 'attributes' then
  local n = tonumber(ARGV[3])
  local prefixes = {}
  for i = 4, 3 + n do
    prefixes[#prefixes + 1] = ARGV[i]
  end
  local wanted = {}
  local requested = {}
  for i = 4 + n, #ARGV do
    wanted[ARGV[i]] = true
    requested[#requested + 1] = ARGV[i]
  end
  local held = {}
  local removed = {}
  local count = 0
  for _, tag in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    held[tag] = true
    if not is_attribute(tag) then
      count = count + 1
    elseif not wanted[tag] then
      for _, prefix in ipairs(prefixes) do
        if string.sub(tag, 1, #prefix) == prefix then
          removed[#removed + 1] = tag
          break
        end
      end
    end
  end
  local added = {}
  for _, tag in ipairs(requested) do
    if not held[tag] then
      added[#added + 1] = tag
    end
  end
  srem(removed)
  sadd(added)
  return reply(1, count, added, removed, {})
end

if op == 'register' then
  local held = redis.call('HMGET', KEYS[2], 'b', 'ra')
  -- An older registration event of this index, delivered late, must not undo a newer one.
  if held[2] and tonumber(held[2]) > tonumber(ARGV[6]) then
    return reply(-1, 0, {}, {}, {})
  end
  if (held[1] or '') ~= ARGV[3] then
    return reply(2, 0, {}, {}, {})
  end
  redis.call('HSET', KEYS[2], 'p', ARGV[4], 'b', ARGV[5], 'ra', ARGV[6])
  return reply(1, 0, {}, {}, {})
end

if op == 'presence' then
  local at = tonumber(ARGV[4])
  local recorded = redis.call('HMGET', KEYS[2], 's', 'sa', 'e', 'ea')
  if ARGV[5] == '1' then
    -- A connect of the session already recorded (applied again) changes nothing: it may have
    -- disconnected since. A connect older than the recorded session (another gateway, events out of
    -- order) loses. A connect whose disconnect came first records the session offline.
    if recorded[1] ~= ARGV[3] and at >= tonumber(recorded[2] or '-1') then
      local online = '1'
      if recorded[3] == ARGV[3] then
        online = '0'
      end
      redis.call('HSET', KEYS[2], 's', ARGV[3], 'sa', ARGV[4], 'o', online)
    end
  elseif recorded[1] == ARGV[3] then
    redis.call('HSET', KEYS[2], 'o', '0')
  elseif at > tonumber(recorded[4] or '-1') then
    redis.call('HSET', KEYS[2], 'e', ARGV[3], 'ea', ARGV[4])
  end
  return reply(1, 0, {}, {}, {}, redis.call('HGET', KEYS[2], 'o') == '1')
end

return redis.error_reply('unknown tag-device operation ' .. op)
