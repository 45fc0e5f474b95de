// The farm's job queue behind one interface: every transition of a job, from
// enqueue to finish, dead letter or removal, as a named method with strong
// types. Two implementations: RedisJobQueue (production; one Lua script per
// transition, queue/lua/) and MemoryJobQueue (in-process tests on a fake
// clock). tests/queue/job_queue_conformance_test.cc holds both to the same
// behaviour.
//
//   std::unique_ptr<JobQueue> q = std::make_unique<RedisJobQueue>(options);
//   SweepRef s{.id = "a1b2", .model = "sd15"};
//   ASSIGN_OR_RETURN(EnqueueResult e, q->Enqueue(s, 0, "a1b2/0", payload_json));
//   ASSIGN_OR_RETURN(ClaimResult c, q->Claim({.model = "sd15", .worker = "gpu-3", .lease = lease}));
//   HeldJob h{s, "gpu-3", c.delivery->stream_id, c.delivery->job_id, 0};
//   ASSIGN_OR_RETURN(Binding b, q->Renew(h));              // heartbeat
//   ASSIGN_OR_RETURN(FinishResult f, q->Finish(h));        // all images recorded
//
// Delivery (at least once) and binding (exactly-once effect), as
// docs/farm.md describes them:
//  - A job is waiting from Enqueue until a worker claims it, then pending for
//    that worker (its owner) until Finish, Fail (dead letter), Cancel,
//    HoldForStorage or removal takes it out. Its delivery count is 1 on its
//    first claim and grows with each redelivery and reclaim.
//  - A delivery is bound to (worker, job) when it is pending for that worker,
//    its own job id is the job named, and the sweep's in-flight record maps
//    the job index to that very delivery (Binding). Renew, Finish and Fail
//    check the binding in the same atomic step as their change; anything but
//    kBound changes nothing.
//  - Each sweep has an in-flight record (job index -> stream id of its live
//    delivery): Enqueue and Requeue write it, Finish and dead letters clear
//    it, HoldForStorage and Pause keep it so that FindLost + Requeue bring the
//    job back.
//
// The sweep hash: its bookkeeping (name, spec, counts, done, repairs) belongs
// to the sweep store, not here. Four of its fields change today in the same
// Redis script as a queue transition, and must keep doing so (a crash between
// two steps would leave a job enqueued twice, a finish uncounted, or a
// cancelled sweep's jobs handed out): the state (Enqueue, SkipRecorded and
// Requeue run only for a running sweep; Cancel, Pause and Resume set it), the
// enqueue cursor next_job (Enqueue, SkipRecorded), jobs_done (Finish, dead
// letters, SkipRecorded) and the failures / failed-items hashes (Fail). The
// interface carries them by naming the sweep (SweepRef): the implementation
// finds those fields under the sweep's keys (queue/keys.h) and updates them in
// the transition's own step; SweepCursor reads them back. RemoveSweep deletes
// the sweep's whole state with its jobs in one step, for the same reason,
// which is why it takes the sweep's name and request id (their index keys go
// with it).
//
// Leader lease: RedisJobQueue runs every state-changing transition through
// the guard it is given (the coordinator's LeaderLease::Eval); reads run
// unguarded. MemoryJobQueue has no lease.
//
// Thread-safe: both implementations may be called from any thread.
#ifndef SDFARM_QUEUE_JOB_QUEUE_H_
#define SDFARM_QUEUE_JOB_QUEUE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sdfarm::queue {

// A sweep as the queue knows it: its id (keys) and its model (stream).
struct SweepRef {
  std::string id;
  std::string model;
};

// One delivery of a job to a worker.
struct Delivery {
  std::string model;
  std::string stream_id;  // names this delivery chain (a requeued job gets a new one)
  std::string job_id;     // "<sweep id>/<job index>"
  std::string payload;    // JobPayload JSON, as enqueued
  int64_t deliveries = 0;  // 1 on the first claim; +1 on each redelivery or reclaim
  std::string owner;       // the worker it is pending for now
};

// What a worker says it holds (the worker from its session, never from the message).
struct HeldJob {
  SweepRef sweep;
  std::string worker;
  std::string stream_id;
  std::string job_id;
  int64_t job_index = 0;
};

// kBound: pending for this worker, this job, the sweep's in-flight delivery.
// kGone: no longer in flight at all (finished, cancelled, deleted): also what a
//   resent report of an acknowledged job sees.
// kNotHeld: another worker's, or still in flight but not this worker's.
// kMismatch: this worker's delivery, but not of the job it names (never honest).
enum class Binding { kBound, kGone, kNotHeld, kMismatch };

enum class SweepState { kRunning, kPaused, kDone, kCancelled };

// The sweep-hash fields the queue's transitions read and change (see above).
struct SweepCursor {
  SweepState state = SweepState::kRunning;
  int64_t next_job = 0;   // the next job index Enqueue takes
  int64_t jobs_done = 0;  // finished or dead-lettered jobs
};

// kRefused: the sweep is not running, its state is gone, or next_job is not
// the job index given (another instance enqueued it): nothing changed.
enum class EnqueueOutcome { kEnqueued, kRefused };
struct EnqueueResult {
  EnqueueOutcome outcome = EnqueueOutcome::kRefused;
  std::string stream_id;  // when kEnqueued
};

struct ClaimRequest {
  std::string model;
  std::string worker;
  absl::Duration lease = absl::Seconds(60);  // idle time after which a delivery may be reclaimed
  // Deliveries already handed to this worker since it registered: not handed
  // back to it as "its own earlier deliveries".
  std::set<std::string> handed;
  // Deliveries this worker failed within the last lease: while one of them
  // still waits to be reclaimed, this worker reclaims nothing (the retry runs
  // elsewhere when another worker is free).
  std::vector<std::string> hold_back;
};

enum class ClaimSource { kNone, kOwn, kExpired, kNew };
struct ClaimResult {
  std::optional<Delivery> delivery;
  ClaimSource source = ClaimSource::kNone;
  // Every delivery pending for the worker, when all were seen (at most
  // kMaxOwnPendingSeen): the caller may forget handed ids not in it.
  std::optional<std::set<std::string>> own_pending;
  // Entries of hold_back no longer waiting to be reclaimed (taken, finished).
  std::vector<std::string> settled;
};
inline constexpr int kMaxOwnPendingSeen = 50;

// What the queue knows of a worker's own pending deliveries (RedeliverOwn).
struct OwnRedelivery {
  std::optional<Delivery> delivery;
  std::optional<std::set<std::string>> pending;  // see ClaimResult::own_pending
};

// kGone: not pending (finished already: a resent report is fine);
// kNotHeld: another worker holds it (the reporter lost its lease);
// kMismatch: the delivery is not that job: nothing changed.
enum class FinishOutcome { kFinished, kGone, kNotHeld, kMismatch };
struct FinishResult {
  FinishOutcome outcome = FinishOutcome::kGone;
  int64_t jobs_done = 0;  // the sweep's, after the transition (also when nothing changed)
};

struct FailRequest {
  int max_attempts = 3;
  // The idle time a released delivery gets, so that another worker's claim
  // reclaims it at once (the coordinator gives lease + 1 s).
  absl::Duration release_idle = absl::Seconds(61);
  bool retryable = true;
  std::string error;
  std::string payload;                 // recorded in the dead letter
  std::vector<int64_t> failed_items;   // item indexes recorded failed with `error` on a dead letter
};
enum class FailOutcome { kReleased, kDeadLettered, kGone, kNotHeld, kMismatch };
struct FailResult {
  FailOutcome outcome = FailOutcome::kGone;
  int64_t attempt = 0;    // kReleased: failures counted so far for the job
  int64_t jobs_done = 0;  // kDeadLettered: the sweep's, after the transition
};

// HoldForStorage: kTakenOut (out of the stream, still in flight: the
// reconciler enqueues it again later), kNotPending, kOtherOwner.
enum class HoldOutcome { kTakenOut, kNotPending, kOtherOwner };

// Pause: kWaiting takes out the jobs never delivered; kAll the delivered
// ones too (start-up with --hold-unfinished: no worker of before is alive).
enum class PauseScope { kWaiting, kAll };

struct LostJob {
  int64_t job_index = 0;
  std::string stream_id;  // the lost delivery's id, as the in-flight record has it
};

struct DeadLetter {
  std::string dead_id;  // id in the dead-letter stream
  std::string stream_id;
  std::string job_id;
  std::string payload;
  int64_t deliveries = 0;
  std::string error;
};

// A model's queue, as the scheduler sizes its refills by it.
struct QueueDepth {
  int64_t length = 0;   // entries in the stream (waiting + delivered, not yet taken out)
  int64_t pending = 0;  // deliveries not yet taken out (also those whose entry was deleted)
  // Jobs never delivered. Below zero when pending deliveries lost their
  // entries (a trimmed stream); the scheduler then refills as it always has.
  int64_t waiting() const { return length - pending; }
};

class JobQueue {
 public:
  virtual ~JobQueue() = default;

  // ---- enqueueing (the scheduler)
  // Enqueues job `job_index` of a running sweep whose next_job is job_index:
  // next_job += 1, in-flight record written.
  virtual absl::StatusOr<EnqueueResult> Enqueue(const SweepRef& sweep, int64_t job_index, const std::string& job_id,
                                                const std::string& payload) = 0;
  // Jobs [from, to) whose images are all on disk: finished without being
  // enqueued (next_job = to, jobs_done += to - from), if the sweep runs and
  // next_job is `from`. The new jobs_done, or nullopt when refused.
  virtual absl::StatusOr<std::optional<int64_t>> SkipRecorded(const SweepRef& sweep, int64_t from, int64_t to) = 0;

  // ---- claiming (a worker's Claim), in this order (Claim below):
  // 1. A delivery pending for `worker` (it or the coordinator restarted) not
  //    in `handed`, delivered to it again (count + 1, idle reset).
  virtual absl::StatusOr<OwnRedelivery> RedeliverOwn(const std::string& model, const std::string& worker,
                                                     const std::set<std::string>& handed) = 0;
  // 2. The oldest delivery idle for at least `lease`, now `worker`'s (count + 1).
  virtual absl::StatusOr<std::optional<Delivery>> ReclaimExpired(const std::string& model, const std::string& worker,
                                                                 absl::Duration lease) = 0;
  // 3. The oldest job never delivered, now `worker`'s (count 1). Never waits.
  virtual absl::StatusOr<std::optional<Delivery>> ClaimNew(const std::string& model, const std::string& worker) = 0;
  // Whether `stream_id` is pending and idle for at least `lease` (waiting to be reclaimed).
  virtual absl::StatusOr<bool> AwaitingReclaim(const std::string& model, const std::string& stream_id,
                                               absl::Duration lease) = 0;
  // The three steps in order, with the hold-back rule. Not one atomic step
  // (each step is); nothing is lost between steps.
  absl::StatusOr<ClaimResult> Claim(const ClaimRequest& request);

  // ---- a held delivery (heartbeat, report)
  virtual absl::StatusOr<Binding> Check(const HeldJob& job) = 0;
  // Check, and when bound resets the idle time (count unchanged).
  virtual absl::StatusOr<Binding> Renew(const HeldJob& job) = 0;
  // When bound: out of the stream, out of the in-flight record, jobs_done + 1.
  virtual absl::StatusOr<FinishResult> Finish(const HeldJob& job) = 0;
  // When bound: counts the failure; below max_attempts (and retryable)
  // releases the delivery to be reclaimed by another worker; otherwise dead
  // letters it (dead-letter stream, failed items, out of stream and in-flight
  // record, jobs_done + 1).
  virtual absl::StatusOr<FailResult> Fail(const HeldJob& job, const FailRequest& request) = 0;
  // Takes a worker's pending delivery out of the stream (XACK + XDEL) but
  // keeps the in-flight record: the reconciler (FindLost, Requeue) enqueues
  // it again later.
  virtual absl::StatusOr<HoldOutcome> HoldForStorage(const std::string& model, const std::string& worker,
                                                     const std::string& stream_id) = 0;

  // ---- a sweep's jobs (client calls)
  // Takes every in-flight job of the sweep out of the stream, forgets the
  // in-flight record, state = cancelled. Returns the jobs removed.
  virtual absl::StatusOr<int64_t> Cancel(const SweepRef& sweep) = 0;
  // state = paused; takes its waiting jobs (kAll: delivered ones too) out of
  // the stream, keeping them in flight (Resume + FindLost + Requeue bring them
  // back). Returns the jobs taken out.
  virtual absl::StatusOr<int64_t> Pause(const SweepRef& sweep, PauseScope scope) = 0;
  // state = running; false (nothing changed) when the sweep's state is gone.
  virtual absl::StatusOr<bool> Resume(const SweepRef& sweep) = 0;
  // sdfarm rm: the sweep's jobs leave the stream and its whole state goes
  // (hashes, and the name, request and sweeps-index entries that are its).
  // False when it was gone already.
  virtual absl::StatusOr<bool> RemoveSweep(const SweepRef& sweep, const std::string& name,
                                           const std::string& request_id) = 0;

  // ---- reconciling (the feeder, every 2 s)
  // In-flight jobs whose stream entry is gone and that nobody can still
  // finish: never delivered, or idle for at least `lease`.
  virtual absl::StatusOr<std::vector<LostJob>> FindLost(const SweepRef& sweep, absl::Duration lease) = 0;
  // Enqueues a lost job again under a new stream id if it is still lost (the
  // record still names `lost`, the sweep runs, the entry is gone, nobody
  // renewed it within `lease`); the new id, or nullopt.
  virtual absl::StatusOr<std::optional<std::string>> Requeue(const SweepRef& sweep, const LostJob& lost,
                                                             const std::string& job_id, const std::string& payload,
                                                             absl::Duration lease) = 0;

  // ---- reads
  virtual absl::StatusOr<QueueDepth> Depth(const std::string& model) = 0;
  // nullopt when the sweep's state is gone (no spec: see sweep_adopt.h).
  virtual absl::StatusOr<std::optional<SweepCursor>> Cursor(const SweepRef& sweep) = 0;
  virtual absl::StatusOr<std::map<int64_t, std::string>> InFlight(const SweepRef& sweep) = 0;
  // Item index -> error, for the sweep's dead-lettered items.
  virtual absl::StatusOr<std::map<int64_t, std::string>> FailedItems(const SweepRef& sweep) = 0;
  // Oldest first, at most max_count.
  virtual absl::StatusOr<std::vector<DeadLetter>> DeadLetters(const std::string& model, int max_count) = 0;
};

const char* SweepStateName(SweepState s);  // "running", "paused", "done", "cancelled"
std::optional<SweepState> ParseSweepState(const std::string& name);

}  // namespace sdfarm::queue

#endif  // SDFARM_QUEUE_JOB_QUEUE_H_
