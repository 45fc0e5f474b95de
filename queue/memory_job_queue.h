// The job queue in memory (see job_queue.h), for in-process tests of the
// coordinator: the same transitions, outcomes and order as RedisJobQueue
// (tests/queue/job_queue_conformance_test.cc runs one suite on both), with
// lease times from an injected Clock so that leases expire on a FakeClock.
//
//   FakeClock clock;
//   MemoryJobQueue q(clock);
//   q.PutSweep({"s1", "sd15"}, {});        // what the sweep store's create script does
//   ... q.Enqueue(...), q.Claim(...) ...
//   clock.Advance(lease);                  // the delivery may be reclaimed now
//
// It models what the coordinator relies on in Redis: one stream per model
// (ids increase; a consumer group that has read up to an id), pending
// deliveries with owner, count and last-delivery time, the sweeps'
// in-flight, failures and failed-items records, the sweep fields the
// transitions change (state, next_job, jobs_done), the dead-letter streams.
// Stream ids are "<n>-0", increasing across models.
//
// Thread-safe: one mutex around everything.
#ifndef SDFARM_QUEUE_MEMORY_JOB_QUEUE_H_
#define SDFARM_QUEUE_MEMORY_JOB_QUEUE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "queue/job_queue.h"

namespace sdfarm::queue {

class MemoryJobQueue final : public JobQueue {
 public:
  explicit MemoryJobQueue(Clock& clock);

  // What the sweep store's create and adopt scripts do to the queue's part of
  // a sweep in Redis: its state exists with this cursor, and nothing of it is
  // in flight, failed or counted as failing.
  void PutSweep(const SweepRef& sweep, const SweepCursor& cursor);
  // What XDEL (or XTRIM) by hand does: the entry leaves the stream; a pending
  // delivery of it stays pending. False when there was no such entry.
  bool DeleteEntry(const std::string& model, const std::string& stream_id);

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

 private:
  struct Entry {
    std::string job_id;
    std::string payload;
  };
  struct Pending {
    std::string owner;
    int64_t deliveries = 0;
    absl::Time delivered;  // Monotonic(): idle = now - delivered
  };
  struct Stream {
    std::map<uint64_t, Entry> entries;
    std::map<uint64_t, Pending> pending;  // the group's pending list
    uint64_t last_delivered = 0;          // the group has read up to here
    std::vector<DeadLetter> dead;
  };
  // A sweep's hash fields the queue knows, and its records. A sweep without
  // `exists` has no state at all; one without `has_spec` has only what a
  // transition wrote into a hash that had gone (as HSET does in Redis).
  struct Sweep {
    bool has_spec = false;
    std::optional<SweepState> state;
    std::optional<int64_t> next_job;
    int64_t jobs_done = 0;
    std::map<int64_t, uint64_t> inflight;
    std::map<int64_t, int64_t> failures;
    std::map<int64_t, std::string> failed_items;
  };

  uint64_t Append(Stream& stream, const std::string& job_id, const std::string& payload)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Binding Bind(const HeldJob& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Running(const std::string& sweep_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration Idle(const Pending& p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The sweep's jobs_done + 1 when `job_index` was in flight (and no longer is).
  void FinishInFlight(Sweep& sweep, int64_t job_index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock& clock_;
  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Stream> streams_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Sweep> sweeps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sdfarm::queue

#endif  // SDFARM_QUEUE_MEMORY_JOB_QUEUE_H_
