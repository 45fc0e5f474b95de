-- Finish (prefixed with binding.lua). KEYS: stream, sweep hash, inflight
-- hash. ARGV: group, worker, stream id, job index, job id. Returns {1,
-- jobs_done} acked, {0, jobs_done} not pending (already finished), {-1,
-- jobs_done} another worker owns it, {-2, jobs_done} the delivery is not that
-- job: nothing done.
local jd = tonumber(redis.call('HGET', KEYS[2], 'jobs_done') or '0')
local code = sdfarm_binding(KEYS[1], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[4])
if code ~= 1 then return {code, jd} end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if redis.call('HDEL', KEYS[3], ARGV[4]) == 1 then
  jd = redis.call('HINCRBY', KEYS[2], 'jobs_done', 1)
end
return {1, jd}
