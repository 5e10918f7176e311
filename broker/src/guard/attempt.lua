-- One login attempt against an account's budget, shared by every api node
-- (broker/src/guard/mod.rs). Atomic, so concurrent guesses on several
-- nodes cannot overrun the budget.
--
-- KEYS[1] failures: attempts counted in the current window (a counter)
-- KEYS[2] strikes: lockouts in the last ARGV[5] ms (a counter)
-- KEYS[3] lock: present while the account is locked out
-- ARGV: max attempts, window ms, first lock ms, longest lock ms, strikes ms
--
-- Returns {allowed (1/0), retry after ms, 1 if this attempt locked it}.
local locked = redis.call('PTTL', KEYS[3])
if locked > 0 then
  return {0, locked, 0}
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if n <= tonumber(ARGV[1]) then
  return {1, 0, 0}
end
-- Over the budget: locked out, twice as long as the lockout before (within
-- the strikes period), up to the longest.
local strikes = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local lock = math.min(tonumber(ARGV[3]) * 2 ^ (strikes - 1), tonumber(ARGV[4]))
lock = math.floor(lock)
redis.call('SET', KEYS[3], '1', 'PX', lock)
redis.call('DEL', KEYS[1])
return {0, lock, 1}
