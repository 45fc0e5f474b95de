-- HoldForStorage. KEYS: stream. ARGV: group, worker, stream id.
-- If the entry is pending for the worker: XACK + XDEL, keeping the sweep's
-- in-flight record, so that the reconciler enqueues the job again later.
-- Returns 1 taken out, 0 not pending, -1 another owner.
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p.err or #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
