-- Requeue. KEYS: stream, sweep hash, inflight hash. ARGV: group, job index,
-- the lost stream id, job id, payload, lease ms. Enqueues a lost job (see
-- find_lost.lua) again under a new stream id, if it is still lost; returns
-- the new id, or nil.
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[3] then return false end
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return false end
if #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) > 0 then return false end
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p.err and #p > 0 then
  if tonumber(p[1][3]) < tonumber(ARGV[6]) then return false end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[4], 'payload', ARGV[5])
redis.call('HSET', KEYS[3], ARGV[2], id)
return id
