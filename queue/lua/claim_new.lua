-- ClaimNew. KEYS: stream. ARGV: group, consumer.
-- The oldest entry never delivered, now the consumer's: {id, job, payload},
-- or false. Never blocks. A missing group (or stream: first use, or deleted
-- under us) is created from id 0 first.
local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
if type(r) == 'table' and r.err then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
  r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
end
if not r or #r == 0 or #r[1][2] == 0 then return false end
local e = r[1][2][1]
local job, payload = '', ''
local f = e[2]
for i = 1, #f, 2 do
  if f[i] == 'job' then job = f[i + 1] elseif f[i] == 'payload' then payload = f[i + 1] end
end
return {e[1], job, payload}
