-- Resume. KEYS: sweep hash. Resumes the sweep; 0 when its state is gone from
-- Redis. Its jobs taken out by a pause come back through find_lost +
-- requeue_lost (the reconciler).
if redis.call('HEXISTS', KEYS[1], 'spec') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running')
return 1
