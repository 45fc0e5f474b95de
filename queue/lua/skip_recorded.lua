-- SkipRecorded. KEYS: sweep hash. ARGV: from (== expected next_job), to.
-- Marks the jobs [from, to) finished without rendering them (their images
-- are on disk). Returns the new jobs_done, or nil when the sweep is not
-- running or next_job moved.
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return false end
if redis.call('HGET', KEYS[1], 'next_job') ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'next_job', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'jobs_done', tonumber(ARGV[2]) - tonumber(ARGV[1]))
