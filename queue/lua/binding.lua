-- The delivery binding (queue/job_queue.h, Binding), as a Lua function that
-- the scripts needing it (check_binding, renew, finish, fail) are prefixed
-- with: `local code, pending = sdfarm_binding(...)`.
-- Returns (1, the XPENDING entry) bound, (0) gone, (-1) not held, (-2) mismatch.
-- XPENDING on a missing stream or group is an error (NOGROUP): redis.pcall
-- turns it into "not pending". HGET answers false for a missing field: the
-- job is not in flight any more (finished, cancelled), so not held either.
local function sdfarm_binding(stream, inflight, group, consumer, id, job_id, job_index)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if p.err or #p == 0 then
    if redis.call('HGET', inflight, job_index) == id then return -1 end
    return 0
  end
  if p[1][2] ~= consumer then return -1 end
  local e = redis.call('XRANGE', stream, id, id)
  if #e == 0 then return 0 end
  local f = e[1][2]
  local job = nil
  for i = 1, #f, 2 do
    if f[i] == 'job' then job = f[i + 1] end
  end
  if job ~= job_id then return -2 end
  local recorded = redis.call('HGET', inflight, job_index)
  if not recorded then return 0 end
  if recorded ~= id then return -2 end
  return 1, p[1]
end
