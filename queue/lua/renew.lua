-- Renew (prefixed with binding.lua): the binding check, and when bound the
-- delivery's idle time reset (XCLAIM JUSTID to the same consumer: the
-- delivery count is unchanged).
-- KEYS: stream, inflight hash. ARGV: group, consumer, stream id, job id, job index.
-- Returns the binding code.
local code = sdfarm_binding(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if code == 1 then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
end
return code
