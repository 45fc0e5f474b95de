-- RemoveSweep. KEYS: sweep hash, inflight hash, failures hash, failed-items
-- hash, request key, name key, sweeps zset, stream. ARGV: sweep id, group.
-- Forgets a sweep (sdfarm rm): its jobs leave the stream, its keys are
-- deleted, its name is free. Returns 1, or 0 when it was already gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local m = redis.call('HGETALL', KEYS[2])
for i = 1, #m, 2 do
  redis.call('XACK', KEYS[8], ARGV[2], m[i + 1])
  redis.call('XDEL', KEYS[8], m[i + 1])
end
if redis.call('GET', KEYS[6]) == ARGV[1] then redis.call('DEL', KEYS[6]) end
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[7], ARGV[1])
return 1
