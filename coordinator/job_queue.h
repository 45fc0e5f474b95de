// The farm's job queue in Redis: one stream per model with one consumer group;
// workers are the group's consumers. Only the coordinator uses it (workers
// have no Redis access): it claims, renews and acknowledges on the workers'
// behalf, under their worker ids, with the binding checks of job_binding.h.
// At-least-once delivery with leases;
// exactly-once effect comes from the ownership check below plus idempotent
// result writes (same job_id -> same output, written by rename).
//
//   JobQueue q(redis.get());                     // keys under "sdfarm:"
//   q.Enqueue("sd15", "sweep7/42", payload);      // coordinator
//   auto job = q.Claim("sd15", "gpu-3", absl::Seconds(5));       // for gpu-3: next new job or nullopt
//   auto lost = q.ReclaimExpired("sd15", "gpu-3", lease, 10);    // for gpu-3: jobs of dead workers
//   q.Renew("sd15", "gpu-3", job->stream_id);    // renewal (tests; the service renews through job_binding.h)
//   // coordinator, when gpu-3 reports the result:
//   if (*q.IsOwner("sd15", "gpu-3", id)) { write outputs idempotently; q.Ack("sd15", id); }
//   // a job whose deliveries exceed the limit (default 3 failures):
//   q.DeadLetter("sd15", job, "CUDA OOM");
//
// Keys: <prefix>:jobs:<model> (stream; entries have fields "job" and
// "payload"), consumer group "workers", <prefix>:dead:<model> (dead-letter
// stream with fields job, payload, stream_id, deliveries, error).
//
// Invariants:
//  1. A job is in the stream from Enqueue until Ack/DeadLetter, which remove
//     it from the group's pending list (PEL) and the stream in one atomic
//     script. Job streams are never trimmed by length, so no pending job can
//     be dropped; Length() counts jobs not yet finished (waiting + in flight).
//  2. A job has at most one owner at a time (its PEL entry's consumer). The
//     owner changes only through ReclaimExpired, which takes a job only after
//     it has been idle for the whole lease, and each such takeover increments
//     the delivery count. Renew resets the idle time only if the caller still
//     owns the job (checked and renewed in one script), so a worker that has
//     lost a job can never renew it back.
//  3. Ack, DeadLetter are idempotent: a job that is no longer pending is left
//     alone (DeadLetter records nothing for a job that was already acked, so
//     a finished job is never dead-lettered).
//  4. Race "check then ack": between IsOwner(W) and Ack, W's lease may expire
//     and W2 may take the job. Both results may then be written; outputs must
//     therefore be idempotent (keyed by job_id), and the lease must be much
//     longer than the coordinator's write time. Where the caller wants the
//     check and the ack as one step, AckIfOwner does both atomically.
//  5. Group creation starts at ID 0, so jobs enqueued before the group existed
//     (or before the stream was recreated) are still delivered.
//
// Failures count as deliveries: a job seen with deliveries > max failures
// (kDefaultMaxFailures) on ReclaimExpired, or failed by its worker for the
// Nth time, should be dead-lettered; that policy is the coordinator's.
//
// Not thread-safe (it uses one RedisClient); one JobQueue per thread.
#ifndef SDFARM_COORDINATOR_JOB_QUEUE_H_
#define SDFARM_COORDINATOR_JOB_QUEUE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/redis_client.h"

namespace sdfarm::coordinator {

inline constexpr int kDefaultMaxFailures = 3;

struct QueuedJob {
  std::string stream_id;
  std::string job_id;
  std::string payload;
  int64_t deliveries = 0;  // 1 on first Claim; +1 on each ReclaimExpired takeover
};

struct DeadLetteredJob {
  std::string dead_id;  // id in the dead-letter stream
  std::string stream_id;
  std::string job_id;
  std::string payload;
  int64_t deliveries = 0;
  std::string error;
};

class JobQueue {
 public:
  static constexpr const char* kGroup = "workers";

  // `redis` must outlive the queue.
  explicit JobQueue(RedisClient* redis, std::string prefix = "sdfarm");

  // XGROUP CREATE ... 0 MKSTREAM; OK when the group already exists.
  absl::Status EnsureGroup(const std::string& model);
  // Returns the job's stream id, which names this delivery chain from now on.
  absl::StatusOr<std::string> Enqueue(const std::string& model, const std::string& job_id,
                                      const std::string& payload);
  // The next new job for `worker`, waiting up to `wait` (0: do not wait);
  // nullopt when none came. Creates the group when it (or the stream) is
  // missing. The call's deadline is `wait` plus the client's command timeout.
  absl::StatusOr<std::optional<QueuedJob>> Claim(const std::string& model, const std::string& worker,
                                                 absl::Duration wait);
  // Up to `max_count` jobs pending and idle for at least `lease`, now owned by
  // `worker`, with their delivery counts (already incremented).
  absl::StatusOr<std::vector<QueuedJob>> ReclaimExpired(const std::string& model, const std::string& worker,
                                                        absl::Duration lease, int max_count);
  // Resets the job's idle time. NotFound when it is no longer pending (acked,
  // dead-lettered, unknown); FailedPrecondition when another worker owns it.
  absl::Status Renew(const std::string& model, const std::string& worker, const std::string& stream_id);
  // Whether `worker` currently owns the pending job.
  absl::StatusOr<bool> IsOwner(const std::string& model, const std::string& worker,
                               const std::string& stream_id);
  // XACK + XDEL in one step; OK when already acked.
  absl::Status Ack(const std::string& model, const std::string& stream_id);
  // Acks only if `worker` owns the job, atomically; true if it did.
  absl::StatusOr<bool> AckIfOwner(const std::string& model, const std::string& worker,
                                  const std::string& stream_id);
  // Acks the job and records it with `error` in the dead-letter stream, in one
  // step; records nothing when the job is no longer pending.
  absl::Status DeadLetter(const std::string& model, const QueuedJob& job, const std::string& error);
  // Oldest first.
  absl::StatusOr<std::vector<DeadLetteredJob>> DeadLetters(const std::string& model, int max_count);

  // Jobs delivered and not yet acked.
  absl::StatusOr<int64_t> Pending(const std::string& model);
  // Jobs enqueued and not yet acked or dead-lettered (waiting + pending).
  absl::StatusOr<int64_t> Length(const std::string& model);

  std::string StreamKey(const std::string& model) const { return prefix_ + ":jobs:" + model; }
  std::string DeadLetterKey(const std::string& model) const { return prefix_ + ":dead:" + model; }

 private:
  absl::StatusOr<std::optional<QueuedJob>> ReadOne(const std::string& model, const std::string& worker,
                                                   absl::Duration wait);

  RedisClient* redis_;
  std::string prefix_;
};

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_JOB_QUEUE_H_
