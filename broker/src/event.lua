-- Publishes a room event and keeps it in the room's recent window: a
-- stream of the room's latest events, entry id <seq>-0, capped in length
-- and expiring when the room has been quiet for the window's age.
--
-- KEYS[1] the room's stream
-- ARGV[1] the room's channel, ARGV[2] the event's seq, ARGV[3] the payload,
-- ARGV[4] most entries kept (0: no window), ARGV[5] the window's age, ms
-- ARGV[6] 'SPUBLISH' on a Redis Cluster (the channel is a shard channel in
--         KEYS[1]'s slot), else 'PUBLISH'
--
-- Returns the number of subscribers that received the event.
if tonumber(ARGV[4]) > 0 then
  -- An id at or below the stream's newest is refused (a room's events
  -- published out of order: posts of one commit batch are published by
  -- their own requests, and two api nodes race): that event is then missing
  -- from the window, and a reader of a range with a hole goes to the
  -- database instead. pcall: the publish happens either way.
  redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], ARGV[2] .. '-0', 'e', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
local publish = 'PUBLISH'
if ARGV[6] == 'SPUBLISH' then publish = 'SPUBLISH' end
return redis.call(publish, ARGV[1], ARGV[3])
