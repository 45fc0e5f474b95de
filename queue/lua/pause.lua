-- Pause. KEYS: stream, inflight hash, sweep hash. ARGV: group, "all" or "".
-- The sweep's jobs still waiting in the stream (never delivered) are taken
-- out of it, so that workers serve other sweeps; they stay in the in-flight
-- hash and are enqueued again on resume (as lost jobs: find_lost,
-- requeue_lost). Delivered jobs finish, unless ARGV[2] is "all" (start-up
-- with --hold-unfinished: no worker of before is alive), which takes them
-- out too. Returns the jobs taken out.
local m = redis.call('HGETALL', KEYS[2])
local removed = 0
for i = 1, #m, 2 do
  local id = m[i + 1]
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if ARGV[2] == 'all' and not p.err and #p > 0 then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    removed = removed + redis.call('XDEL', KEYS[1], id)
  elseif not p.err and #p == 0 then
    removed = removed + redis.call('XDEL', KEYS[1], id)
  end
end
redis.call('HSET', KEYS[3], 'state', 'paused')
return removed
