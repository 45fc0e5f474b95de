-- RedeliverOwn, one delivery. KEYS: stream. ARGV: group, consumer, stream id.
-- The entry delivered to the same consumer again (its count + 1, idle reset):
-- {id, job, payload, deliveries}, or false when it is not (any more) pending
-- for it or its message is gone.
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p.err or #p == 0 or p[1][2] ~= ARGV[2] then return false end
local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if #c == 0 or type(c[1]) ~= 'table' then return false end
local f = c[1][2]
local job, payload = '', ''
for i = 1, #f, 2 do
  if f[i] == 'job' then job = f[i + 1] elseif f[i] == 'payload' then payload = f[i + 1] end
end
return {ARGV[3], job, payload, p[1][4] + 1}
