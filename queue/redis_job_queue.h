// The job queue in Redis (see job_queue.h): one stream per model with one
// consumer group, the sweeps' in-flight records as hashes, every transition
// one Lua script (queue/lua/, compiled in), keys as queue/keys.h names them.
// Only the coordinator talks to it; workers have no Redis access.
//
//   RedisJobQueueOptions o{.redis = redis_options, .key_prefix = "sdfarm"};
//   // every state-changing script goes through the coordinator's leader lease:
//   o.guard = [&lease](RedisClient* r, std::vector<std::string> argv) { return lease.Eval(r, std::move(argv)); };
//   RedisJobQueue q(std::move(o));
//
// The guard receives {"EVAL", script, numkeys, keys..., args...} and runs it
// (LeaderLease::Eval prefixes the script with its lease check and appends its
// key and arguments); reads (Check, FindLost, AwaitingReclaim, Depth,
// Cursor, InFlight, FailedItems, DeadLetters, the XPENDING before a
// redelivery) run without it. No guard: scripts run as they are.
//
// Thread-safe: each call takes a connection from the queue's own pool (one
// RedisClient per call at a time; connections are made on demand and kept,
// up to max_idle_connections).
#ifndef SDFARM_QUEUE_REDIS_JOB_QUEUE_H_
#define SDFARM_QUEUE_REDIS_JOB_QUEUE_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/redis_client.h"
#include "queue/job_queue.h"
#include "queue/keys.h"

namespace sdfarm::queue {

using ScriptGuard = std::function<absl::StatusOr<RedisReply>(RedisClient* redis, std::vector<std::string> argv)>;

struct RedisJobQueueOptions {
  RedisOptions redis;
  std::string key_prefix = "sdfarm";
  ScriptGuard guard;  // empty: state-changing scripts run unguarded
  int max_idle_connections = 64;
};

class RedisJobQueue final : public JobQueue {
 public:
  explicit RedisJobQueue(RedisJobQueueOptions options);
  ~RedisJobQueue() override;

  absl::StatusOr<EnqueueResult> Enqueue(const SweepRef& sweep, int64_t job_index, const std::string& job_id,
                                        const std::string& payload) override;
  absl::StatusOr<std::optional<int64_t>> SkipRecorded(const SweepRef& sweep, int64_t from, int64_t to) override;
  absl::StatusOr<OwnRedelivery> RedeliverOwn(const std::string& model, const std::string& worker,
                                             const std::set<std::string>& handed) override;
  absl::StatusOr<std::optional<Delivery>> ReclaimExpired(const std::string& model, const std::string& worker,
                                                         absl::Duration lease) override;
  absl::StatusOr<std::optional<Delivery>> ClaimNew(const std::string& model, const std::string& worker) override;
  absl::StatusOr<bool> AwaitingReclaim(const std::string& model, const std::string& stream_id,
                                       absl::Duration lease) override;
  absl::StatusOr<Binding> Check(const HeldJob& job) override;
  absl::StatusOr<Binding> Renew(const HeldJob& job) override;
  absl::StatusOr<FinishResult> Finish(const HeldJob& job) override;
  absl::StatusOr<FailResult> Fail(const HeldJob& job, const FailRequest& request) override;
  absl::StatusOr<HoldOutcome> HoldForStorage(const std::string& model, const std::string& worker,
                                             const std::string& stream_id) override;
  absl::StatusOr<int64_t> Cancel(const SweepRef& sweep) override;
  absl::StatusOr<int64_t> Pause(const SweepRef& sweep, PauseScope scope) override;
  absl::StatusOr<bool> Resume(const SweepRef& sweep) override;
  absl::StatusOr<bool> RemoveSweep(const SweepRef& sweep, const std::string& name,
                                   const std::string& request_id) override;
  absl::StatusOr<std::vector<LostJob>> FindLost(const SweepRef& sweep, absl::Duration lease) override;
  absl::StatusOr<std::optional<std::string>> Requeue(const SweepRef& sweep, const LostJob& lost,
                                                     const std::string& job_id, const std::string& payload,
                                                     absl::Duration lease) override;
  absl::StatusOr<QueueDepth> Depth(const std::string& model) override;
  absl::StatusOr<std::optional<SweepCursor>> Cursor(const SweepRef& sweep) override;
  absl::StatusOr<std::map<int64_t, std::string>> InFlight(const SweepRef& sweep) override;
  absl::StatusOr<std::map<int64_t, std::string>> FailedItems(const SweepRef& sweep) override;
  absl::StatusOr<std::vector<DeadLetter>> DeadLetters(const std::string& model, int max_count) override;

  const KeySchema& keys() const { return keys_; }

 private:
  // A pooled connection, given back when it goes out of scope.
  class Connection {
   public:
    Connection(RedisJobQueue* owner, std::unique_ptr<RedisClient> client)
        : owner_(owner), client_(std::move(client)) {}
    Connection(Connection&&) = default;
    ~Connection();
    RedisClient* get() const { return client_.get(); }
    RedisClient* operator->() const { return client_.get(); }

   private:
    RedisJobQueue* owner_;
    std::unique_ptr<RedisClient> client_;
  };

  absl::StatusOr<Connection> Acquire();
  // Runs a state-changing script through the guard.
  absl::StatusOr<RedisReply> Guarded(RedisClient* redis, std::vector<std::string> argv);
  // Runs a binding script (check or renew) for `job`.
  absl::StatusOr<Binding> RunBinding(const HeldJob& job, bool renew);

  const RedisJobQueueOptions options_;
  const KeySchema keys_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<RedisClient>> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sdfarm::queue

#endif  // SDFARM_QUEUE_REDIS_JOB_QUEUE_H_
