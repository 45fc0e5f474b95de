// The queue's transitions that both implementations share (see job_queue.h).
#include "queue/job_queue.h"

#include <utility>

#include "common/status_macros.h"

namespace sdfarm::queue {

absl::StatusOr<ClaimResult> JobQueue::Claim(const ClaimRequest& request) {
  ClaimResult out;
  // 1. What the worker held before it registered again.
  ASSIGN_OR_RETURN(OwnRedelivery own, RedeliverOwn(request.model, request.worker, request.handed));
  out.own_pending = std::move(own.pending);
  if (own.delivery) {
    out.delivery = std::move(own.delivery);
    out.source = ClaimSource::kOwn;
    return out;
  }
  // 2. Expired leases, unless a job this worker failed still waits for another worker.
  bool hold = false;
  for (const std::string& id : request.hold_back) {
    ASSIGN_OR_RETURN(bool waiting, AwaitingReclaim(request.model, id, request.lease));
    if (waiting) {
      hold = true;
    } else {
      out.settled.push_back(id);
    }
  }
  if (!hold) {
    ASSIGN_OR_RETURN(out.delivery, ReclaimExpired(request.model, request.worker, request.lease));
    if (out.delivery) {
      out.source = ClaimSource::kExpired;
      return out;
    }
  }
  // 3. A new job.
  ASSIGN_OR_RETURN(out.delivery, ClaimNew(request.model, request.worker));
  if (out.delivery) out.source = ClaimSource::kNew;
  return out;
}

const char* SweepStateName(SweepState s) {
  switch (s) {
    case SweepState::kRunning: return "running";
    case SweepState::kPaused: return "paused";
    case SweepState::kDone: return "done";
    case SweepState::kCancelled: return "cancelled";
  }
  return "running";
}

std::optional<SweepState> ParseSweepState(const std::string& name) {
  if (name == "running") return SweepState::kRunning;
  if (name == "paused") return SweepState::kPaused;
  if (name == "done") return SweepState::kDone;
  if (name == "cancelled") return SweepState::kCancelled;
  return std::nullopt;
}

}  // namespace sdfarm::queue
