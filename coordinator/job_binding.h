// What ties a job's delivery to its worker: the Redis steps with which the
// coordinator hands a stream entry to a worker and checks, atomically on the
// server, that a worker's report, renewal, finish or failure is about a
// delivery it really holds. Workers have no Redis access (docs/farm.md), so
// every transition of a delivery goes through these checks.
//
// A delivery is bound when, in one script:
//   1. the stream entry is pending in the group for the worker's consumer;
//   2. the entry's own `job` field is the job id the worker names;
//   3. the sweep's in-flight hash (job index -> stream id) maps that job to
//      this very entry.
// (1) failing: kNotHeld when the entry is another worker's, or still the
// sweep's in-flight delivery of that job without being this worker's (never
// delivered, or taken back); kGone when the job is no longer in flight at all
// (finished, cancelled, deleted), which is also what a worker resending a
// report that was acknowledged already sees. (1) holding and (2) or (3)
// failing means the worker names a job its delivery is not: kMismatch, never
// an honest outcome.
//
//   DeliveryRef d{stream_key, inflight_key, worker_id, stream_id, job_id, job_index};
//   ASSIGN_OR_RETURN(Binding b, CheckBinding(redis, d));   // before writing an image
//   ASSIGN_OR_RETURN(Binding b, RenewBinding(redis, d));   // Heartbeat: also resets the idle time
//
// kBindingLua is the check as a Lua function, for scripts that do more in
// the same step (finish, fail): `local code, pending = sdfarm_binding(...)`.
#ifndef SDFARM_COORDINATOR_JOB_BINDING_H_
#define SDFARM_COORDINATOR_JOB_BINDING_H_

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "common/redis_client.h"
#include "coordinator/job_queue.h"

namespace sdfarm::coordinator {

enum class Binding { kBound, kGone, kNotHeld, kMismatch };

struct DeliveryRef {
  std::string stream_key;    // <prefix>:jobs:<model>
  std::string inflight_key;  // <prefix>:sweep:<id>:inflight
  std::string worker;        // consumer name (the session's worker id)
  std::string stream_id;
  std::string job_id;
  int64_t job_index = 0;
};

// Lua: function sdfarm_binding(stream, inflight, group, consumer, id, job_id,
// job_index) returning (1, xpending entry) bound, (0) gone, (-1) not held,
// (-2) mismatch.
extern const char kBindingLua[];

// The script's code as a Binding (1 bound, 0 gone, -1 not held, -2 mismatch).
Binding BindingFromCode(int64_t code);

absl::StatusOr<Binding> CheckBinding(RedisClient* redis, const DeliveryRef& d);
// CheckBinding, and when bound, resets the entry's idle time (XCLAIM JUSTID
// to the same consumer: the delivery count is unchanged).
absl::StatusOr<Binding> RenewBinding(RedisClient* redis, const DeliveryRef& d);

// A delivery `worker` holds already (pending for its consumer) and that is
// not in `skip`, delivered to it again (its delivery count incremented, its
// idle time reset); nullopt when there is none. For a worker that
// registered again after its own or the coordinator's restart. When
// `pending` is set it receives every delivery pending for `worker` if they
// were all seen (at most 50), else it is left empty and *complete is false.
absl::StatusOr<std::optional<QueuedJob>> RedeliverOwn(RedisClient* redis, const std::string& stream_key,
                                                       const std::string& worker, const std::set<std::string>& skip,
                                                       std::set<std::string>* pending, bool* complete);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_JOB_BINDING_H_
