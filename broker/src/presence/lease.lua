-- A node's lease.
--
-- KEYS[1] the lease set (ZSET node id -> lease expiry, ms, Redis clock)
-- ARGV[1] node id
-- ARGV[2] lease length, ms
-- ARGV[3] 'new' (a new node), 'renew' (its heartbeat) or 'retire' (its
--         goodbye: the lease ends ARGV[2] ms from now, and is not renewed)
-- ARGV[4] most expired nodes to report ('renew')
--
-- Returns {1, expired node ids...} while the lease holds, {0} once it is
-- lost: expired, or removed by another node's clean-up. A lost lease is
-- never renewed: the node carries on under a new id.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = string.format('%.0f', now + tonumber(ARGV[2]))
if ARGV[3] == 'new' then
  redis.call('ZADD', KEYS[1], 'NX', expiry, ARGV[1])
  return {1}
end
if ARGV[3] == 'retire' then
  -- Expired once the time is past: at once for a length of 0.
  expiry = string.format('%.0f', now + tonumber(ARGV[2]) - 1)
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[1])
  return {1}
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(expired) do
  if id == ARGV[1] then return {0} end
end
-- CH: 1 when the score moved, 0 when the node is not there any more. (The
-- score also stays put for a renewal in the same millisecond as the last
-- one with the same length; renewals are a heartbeat apart, never that.)
if redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[1]) == 0 then return {0} end
local answer = {1}
for _, id in ipairs(expired) do answer[#answer + 1] = id end
return answer
