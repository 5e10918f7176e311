-- Forgets an expired node whose entries are all gone, and releases the
-- clean-up lock if this reaper holds it.
--
-- KEYS[1] the lease set, KEYS[2] the node's entry set, KEYS[3] the lock
-- ARGV[1] the expired node's id, ARGV[2] the reaper's id
--
-- Returns 1 if the node was forgotten, 0 if entries remain or it is live.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '-1')
local done = 0
if lease < now and redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  done = 1
end
if redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
return done
