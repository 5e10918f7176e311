-- Applies one node's presence changes, in order, and publishes a
-- `presence` event on the room's channel for every change of a user's
-- presence in a room (the first node to hold them, or the last to let go).
--
-- KEYS[1]   the lease set (ZSET node id -> lease expiry, ms, Redis clock)
-- KEYS[2]   the node's entry set
-- KEYS[2+i] the key op i changes: a user's node set or a room's hash
-- ARGV[1]   node id
-- ARGV[2]   channel prefix (the broker's); empty on a Redis Cluster, where
--           the events are returned for the caller to publish (a script
--           may not publish outside its slot)
-- ARGV[3]   'live': only while the node's lease holds (a node's own changes)
--           'reap': only once it has expired (another node cleaning up)
-- ARGV[3+i] op i: '+' or '-', then the entry: 'u:<user>' or 'r:<room>:<user>'
--
-- Returns {n, room, event, room, event, ...}: n the number of events, -1 if
-- the lease is lost ('live'), -2 if it still holds ('reap'); the rooms and
-- events only when ARGV[2] is empty.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '-1')
local live = lease >= now_ms
if ARGV[3] == 'live' and not live then return {-1} end
if ARGV[3] == 'reap' and live then return {-2} end
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local events = 0
local returned = {0}
for i = 4, #ARGV do
  local op = ARGV[i]
  local key = KEYS[i - 1]
  local add = string.sub(op, 1, 1) == '+'
  local entry = string.sub(op, 2)
  local moved
  if add then
    moved = redis.call('SADD', KEYS[2], entry) == 1
  else
    moved = redis.call('SREM', KEYS[2], entry) == 1
  end
  if moved then
    if string.sub(entry, 1, 2) == 'u:' then
      if add then
        redis.call('SADD', key, ARGV[1])
      else
        redis.call('SREM', key, ARGV[1])
      end
    else
      local room, user = string.match(entry, '^r:(%-?%d+):(%-?%d+)$')
      if room then
        local n = redis.call('HINCRBY', key, user, add and 1 or -1)
        if n <= 0 then redis.call('HDEL', key, user) end
        if (add and n == 1) or ((not add) and n <= 0) then
          -- Versions are Redis-clock microseconds, strictly increasing per
          -- room while the room has anyone in it.
          local v = math.max(now_us, tonumber(redis.call('HGET', key, 'v') or '0') + 1)
          local vs = string.format('%.0f', v)
          if (not add) and redis.call('HLEN', key) <= 1 then
            redis.call('DEL', key)
          else
            redis.call('HSET', key, 'v', vs)
          end
          local event = '{"type":"presence","room_id":' .. room .. ',"user_id":' .. user ..
            ',"online":' .. (add and 'true' or 'false') .. ',"version":' .. vs .. '}'
          if ARGV[2] == '' then
            returned[#returned + 1] = room
            returned[#returned + 1] = event
          else
            redis.call('PUBLISH', ARGV[2] .. 'room:' .. room, event)
          end
          events = events + 1
        end
      end
    end
  end
end
returned[1] = events
return returned
