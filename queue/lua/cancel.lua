-- Cancel. KEYS: stream, inflight hash, sweep hash. ARGV: group. Removes every
-- job of the sweep from the stream and marks it cancelled. Returns the jobs
-- removed.
local m = redis.call('HGETALL', KEYS[2])
for i = 1, #m, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], m[i + 1])
  redis.call('XDEL', KEYS[1], m[i + 1])
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[3], 'state', 'cancelled')
return #m / 2
