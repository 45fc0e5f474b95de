-- ReclaimExpired. KEYS: stream. ARGV: group, consumer, lease ms.
-- The oldest delivery idle for at least the lease, now the consumer's (its
-- count + 1): {id, job, payload, deliveries}, or false. XAUTOCLAIM scans a
-- bounded slice of the pending list per call: follow its cursor around the
-- list once (bounded). No stream or group: nothing pending.
local cursor = '0-0'
for round = 1, 100 do
  local r = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', 1)
  if r.err then return false end
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if type(e) == 'table' then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
      local job, payload = '', ''
      local f = e[2]
      for i = 1, #f, 2 do
        if f[i] == 'job' then job = f[i + 1] elseif f[i] == 'payload' then payload = f[i + 1] end
      end
      return {e[1], job, payload, p[1][4]}
    end
  end
  if cursor == '0-0' then break end
end
return false
