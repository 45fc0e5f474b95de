-- Enqueue. KEYS: stream, sweep hash, inflight hash. ARGV: group, job index
-- (== the expected next_job), job id, payload. Returns the stream id, or nil
-- when the sweep is not running or next_job moved (another coordinator
-- instance enqueued it). The group is created with the stream (from id 0, so
-- that every entry is delivered), as the scheduler always did before enqueueing.
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return false end
if redis.call('HGET', KEYS[2], 'next_job') ~= ARGV[2] then return false end
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[3], 'payload', ARGV[4])
redis.call('HSET', KEYS[2], 'next_job', tonumber(ARGV[2]) + 1)
redis.call('HSET', KEYS[3], ARGV[2], id)
return id
