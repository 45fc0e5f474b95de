-- Fail (prefixed with binding.lua). KEYS: stream, sweep hash, inflight hash,
-- failures hash, failed-items hash, dead-letter stream. ARGV: group, worker,
-- stream id, job index, max attempts, idle ms for release, retryable (1/0),
-- error, job id, payload, released consumer, item index...
-- Returns {-1, 0} other owner, {0, 0} not pending, {-2, 0} the delivery is
-- not that job (nothing counted), {1, n} released for attempt n+1, {2,
-- jobs_done} dead-lettered (items failed).
local code, pe = sdfarm_binding(KEYS[1], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[9], ARGV[4])
if code ~= 1 then return {code, 0} end
local n = redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
if ARGV[7] == '1' and n < tonumber(ARGV[5]) then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[11], 0, ARGV[3], 'IDLE', ARGV[6], 'JUSTID')
  return {1, n}
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[6], '*', 'job', ARGV[9], 'payload', ARGV[10], 'stream_id', ARGV[3],
           'deliveries', pe[4], 'error', ARGV[8])
for i = 12, #ARGV do redis.call('HSET', KEYS[5], ARGV[i], ARGV[8]) end
local jd = tonumber(redis.call('HGET', KEYS[2], 'jobs_done') or '0')
if redis.call('HDEL', KEYS[3], ARGV[4]) == 1 then
  jd = redis.call('HINCRBY', KEYS[2], 'jobs_done', 1)
end
return {2, jd}
