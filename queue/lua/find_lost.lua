-- FindLost (read only). KEYS: stream, inflight hash. ARGV: group, lease ms.
-- The in-flight jobs of a sweep whose stream entry is gone although the job
-- was never acked (the stream was trimmed, the entry deleted by hand, a
-- pause, a hold for storage) and that nobody can still finish: it was never
-- delivered, or its delivery has been idle for a whole lease. (A live owner
-- renews its delivery; Redis >= 7 then drops the pending entry of a deleted
-- message, so the job comes back here on a later pass.)
-- Returns {job index, stream id, ...}.
local m = redis.call('HGETALL', KEYS[2])
local lost = {}
for i = 1, #m, 2 do
  local id = m[i + 1]
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    if p.err or #p == 0 or tonumber(p[1][3]) >= tonumber(ARGV[2]) then
      table.insert(lost, m[i])
      table.insert(lost, id)
    end
  end
end
return lost
