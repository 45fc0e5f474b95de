-- Check (read only; prefixed with binding.lua).
-- KEYS: stream, inflight hash. ARGV: group, consumer, stream id, job id, job index.
-- Returns the binding code.
return (sdfarm_binding(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]))
