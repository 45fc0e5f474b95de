// The job queue in memory (see memory_job_queue.h). Each method mirrors the
// Lua script of the same transition in queue/lua/, step by step.
#include "queue/memory_job_queue.h"

#include <algorithm>
#include <cstddef>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "queue/keys.h"

namespace sdfarm::queue {
namespace {

std::string IdText(uint64_t id) { return absl::StrCat(id, "-0"); }

// "<n>-0" -> n; nullopt for anything else (an id this queue never made).
std::optional<uint64_t> ParseId(const std::string& text) {
  const size_t dash = text.find('-');
  uint64_t id = 0;
  if (dash == std::string::npos || text.substr(dash) != "-0" || !absl::SimpleAtoi(text.substr(0, dash), &id)) {
    return std::nullopt;
  }
  return id;
}

}  // namespace

MemoryJobQueue::MemoryJobQueue(Clock& clock) : clock_(clock) {}

void MemoryJobQueue::PutSweep(const SweepRef& sweep, const SweepCursor& cursor) {
  absl::MutexLock lock(&mu_);
  Sweep& s = sweeps_[sweep.id];
  s = Sweep{};
  s.has_spec = true;
  s.state = cursor.state;
  s.next_job = cursor.next_job;
  s.jobs_done = cursor.jobs_done;
}

bool MemoryJobQueue::DeleteEntry(const std::string& model, const std::string& stream_id) {
  absl::MutexLock lock(&mu_);
  const std::optional<uint64_t> id = ParseId(stream_id);
  return id && streams_[model].entries.erase(*id) == 1;
}

uint64_t MemoryJobQueue::Append(Stream& stream, const std::string& job_id, const std::string& payload) {
  const uint64_t id = next_id_++;
  stream.entries[id] = Entry{job_id, payload};
  return id;
}

bool MemoryJobQueue::Running(const std::string& sweep_id) {
  auto it = sweeps_.find(sweep_id);
  return it != sweeps_.end() && it->second.state == SweepState::kRunning;
}

absl::Duration MemoryJobQueue::Idle(const Pending& p) { return clock_.Monotonic() - p.delivered; }

void MemoryJobQueue::FinishInFlight(Sweep& sweep, int64_t job_index) {
  if (sweep.inflight.erase(job_index) == 1) ++sweep.jobs_done;
}

absl::StatusOr<EnqueueResult> MemoryJobQueue::Enqueue(const SweepRef& sweep, int64_t job_index,
                                                      const std::string& job_id, const std::string& payload) {
  absl::MutexLock lock(&mu_);
  if (!Running(sweep.id)) return EnqueueResult{};
  Sweep& s = sweeps_[sweep.id];
  if (s.next_job != job_index) return EnqueueResult{};
  const uint64_t id = Append(streams_[sweep.model], job_id, payload);
  s.next_job = job_index + 1;
  s.inflight[job_index] = id;
  return EnqueueResult{EnqueueOutcome::kEnqueued, IdText(id)};
}

absl::StatusOr<std::optional<int64_t>> MemoryJobQueue::SkipRecorded(const SweepRef& sweep, int64_t from, int64_t to) {
  absl::MutexLock lock(&mu_);
  if (!Running(sweep.id)) return std::nullopt;
  Sweep& s = sweeps_[sweep.id];
  if (s.next_job != from) return std::nullopt;
  s.next_job = to;
  s.jobs_done += to - from;
  return s.jobs_done;
}

absl::StatusOr<OwnRedelivery> MemoryJobQueue::RedeliverOwn(const std::string& model, const std::string& worker,
                                                           const std::set<std::string>& handed) {
  absl::MutexLock lock(&mu_);
  Stream& stream = streams_[model];
  std::vector<uint64_t> own;
  for (const auto& [id, p] : stream.pending) {
    if (p.owner != worker) continue;
    own.push_back(id);
    if (static_cast<int>(own.size()) == kMaxOwnPendingSeen) break;
  }
  OwnRedelivery out;
  if (static_cast<int>(own.size()) < kMaxOwnPendingSeen) {
    out.pending.emplace();
    for (uint64_t id : own) out.pending->insert(IdText(id));
  }
  for (uint64_t id : own) {
    if (handed.count(IdText(id))) continue;
    auto entry = stream.entries.find(id);
    if (entry == stream.entries.end()) {
      stream.pending.erase(id);  // XCLAIM drops the delivery of a deleted entry (Redis >= 7)
      continue;
    }
    Pending& p = stream.pending[id];
    ++p.deliveries;
    p.delivered = clock_.Monotonic();
    out.delivery = Delivery{model, IdText(id), entry->second.job_id, entry->second.payload, p.deliveries, worker};
    return out;
  }
  return out;
}

absl::StatusOr<std::optional<Delivery>> MemoryJobQueue::ReclaimExpired(const std::string& model,
                                                                       const std::string& worker,
                                                                       absl::Duration lease) {
  if (lease <= absl::ZeroDuration()) return absl::InvalidArgumentError("ReclaimExpired: the lease must be positive");
  absl::MutexLock lock(&mu_);
  Stream& stream = streams_[model];
  for (auto it = stream.pending.begin(); it != stream.pending.end();) {
    if (Idle(it->second) < lease) {
      ++it;
      continue;
    }
    auto entry = stream.entries.find(it->first);
    if (entry == stream.entries.end()) {
      it = stream.pending.erase(it);  // XAUTOCLAIM drops the delivery of a deleted entry (Redis >= 7)
      continue;
    }
    Pending& p = it->second;
    p.owner = worker;
    ++p.deliveries;
    p.delivered = clock_.Monotonic();
    return Delivery{model, IdText(it->first), entry->second.job_id, entry->second.payload, p.deliveries, worker};
  }
  return std::nullopt;
}

absl::StatusOr<std::optional<Delivery>> MemoryJobQueue::ClaimNew(const std::string& model, const std::string& worker) {
  absl::MutexLock lock(&mu_);
  Stream& stream = streams_[model];
  auto entry = stream.entries.upper_bound(stream.last_delivered);
  if (entry == stream.entries.end()) return std::nullopt;
  stream.last_delivered = entry->first;
  stream.pending[entry->first] = Pending{worker, 1, clock_.Monotonic()};
  return Delivery{model, IdText(entry->first), entry->second.job_id, entry->second.payload, 1, worker};
}

absl::StatusOr<bool> MemoryJobQueue::AwaitingReclaim(const std::string& model, const std::string& stream_id,
                                                     absl::Duration lease) {
  absl::MutexLock lock(&mu_);
  const std::optional<uint64_t> id = ParseId(stream_id);
  if (!id) return false;
  const Stream& stream = streams_[model];
  auto p = stream.pending.find(*id);
  return p != stream.pending.end() && Idle(p->second) >= lease;
}

Binding MemoryJobQueue::Bind(const HeldJob& job) {
  Stream& stream = streams_[job.sweep.model];
  auto sweep = sweeps_.find(job.sweep.id);
  std::optional<uint64_t> recorded;
  if (sweep != sweeps_.end()) {
    auto r = sweep->second.inflight.find(job.job_index);
    if (r != sweep->second.inflight.end()) recorded = r->second;
  }
  const std::optional<uint64_t> id = ParseId(job.stream_id);
  auto p = id ? stream.pending.find(*id) : stream.pending.end();
  if (p == stream.pending.end()) return recorded && id && *recorded == *id ? Binding::kNotHeld : Binding::kGone;
  if (p->second.owner != job.worker) return Binding::kNotHeld;
  auto entry = stream.entries.find(*id);
  if (entry == stream.entries.end()) return Binding::kGone;
  if (entry->second.job_id != job.job_id) return Binding::kMismatch;
  if (!recorded) return Binding::kGone;
  if (*recorded != *id) return Binding::kMismatch;
  return Binding::kBound;
}

absl::StatusOr<Binding> MemoryJobQueue::Check(const HeldJob& job) {
  absl::MutexLock lock(&mu_);
  return Bind(job);
}

absl::StatusOr<Binding> MemoryJobQueue::Renew(const HeldJob& job) {
  absl::MutexLock lock(&mu_);
  const Binding b = Bind(job);
  if (b == Binding::kBound) streams_[job.sweep.model].pending[*ParseId(job.stream_id)].delivered = clock_.Monotonic();
  return b;
}

absl::StatusOr<FinishResult> MemoryJobQueue::Finish(const HeldJob& job) {
  absl::MutexLock lock(&mu_);
  auto sweep = sweeps_.find(job.sweep.id);
  FinishResult out;
  out.jobs_done = sweep != sweeps_.end() ? sweep->second.jobs_done : 0;
  switch (Bind(job)) {
    case Binding::kGone: out.outcome = FinishOutcome::kGone; return out;
    case Binding::kNotHeld: out.outcome = FinishOutcome::kNotHeld; return out;
    case Binding::kMismatch: out.outcome = FinishOutcome::kMismatch; return out;
    case Binding::kBound: break;
  }
  Stream& stream = streams_[job.sweep.model];
  const uint64_t id = *ParseId(job.stream_id);
  stream.pending.erase(id);
  stream.entries.erase(id);
  FinishInFlight(sweep->second, job.job_index);  // bound: the sweep has it in flight
  out.outcome = FinishOutcome::kFinished;
  out.jobs_done = sweep->second.jobs_done;
  return out;
}

absl::StatusOr<FailResult> MemoryJobQueue::Fail(const HeldJob& job, const FailRequest& request) {
  absl::MutexLock lock(&mu_);
  FailResult out;
  switch (Bind(job)) {
    case Binding::kGone: out.outcome = FailOutcome::kGone; return out;
    case Binding::kNotHeld: out.outcome = FailOutcome::kNotHeld; return out;
    case Binding::kMismatch: out.outcome = FailOutcome::kMismatch; return out;
    case Binding::kBound: break;
  }
  Sweep& sweep = sweeps_[job.sweep.id];
  Stream& stream = streams_[job.sweep.model];
  const uint64_t id = *ParseId(job.stream_id);
  const int64_t n = ++sweep.failures[job.job_index];
  if (request.retryable && n < request.max_attempts) {
    Pending& p = stream.pending[id];
    p.owner = kReleasedConsumer;
    p.delivered = clock_.Monotonic() - request.release_idle;
    out.outcome = FailOutcome::kReleased;
    out.attempt = n;
    return out;
  }
  const int64_t deliveries = stream.pending[id].deliveries;
  stream.pending.erase(id);
  stream.entries.erase(id);
  stream.dead.push_back(
      DeadLetter{IdText(next_id_++), job.stream_id, job.job_id, request.payload, deliveries, request.error});
  for (int64_t item : request.failed_items) sweep.failed_items[item] = request.error;
  FinishInFlight(sweep, job.job_index);
  out.outcome = FailOutcome::kDeadLettered;
  out.jobs_done = sweep.jobs_done;
  return out;
}

absl::StatusOr<HoldOutcome> MemoryJobQueue::HoldForStorage(const std::string& model, const std::string& worker,
                                                           const std::string& stream_id) {
  absl::MutexLock lock(&mu_);
  Stream& stream = streams_[model];
  const std::optional<uint64_t> id = ParseId(stream_id);
  auto p = id ? stream.pending.find(*id) : stream.pending.end();
  if (p == stream.pending.end()) return HoldOutcome::kNotPending;
  if (p->second.owner != worker) return HoldOutcome::kOtherOwner;
  stream.pending.erase(p);
  stream.entries.erase(*id);
  return HoldOutcome::kTakenOut;
}

absl::StatusOr<int64_t> MemoryJobQueue::Cancel(const SweepRef& sweep) {
  absl::MutexLock lock(&mu_);
  Sweep& s = sweeps_[sweep.id];
  Stream& stream = streams_[sweep.model];
  const int64_t removed = static_cast<int64_t>(s.inflight.size());
  for (const auto& [index, id] : s.inflight) {
    stream.pending.erase(id);
    stream.entries.erase(id);
  }
  s.inflight.clear();
  s.state = SweepState::kCancelled;
  return removed;
}

absl::StatusOr<int64_t> MemoryJobQueue::Pause(const SweepRef& sweep, PauseScope scope) {
  absl::MutexLock lock(&mu_);
  Sweep& s = sweeps_[sweep.id];
  Stream& stream = streams_[sweep.model];
  int64_t removed = 0;
  for (const auto& [index, id] : s.inflight) {
    const bool delivered = stream.pending.count(id) > 0;
    if (delivered && scope == PauseScope::kAll) {
      stream.pending.erase(id);
      removed += static_cast<int64_t>(stream.entries.erase(id));
    } else if (!delivered) {
      removed += static_cast<int64_t>(stream.entries.erase(id));
    }
  }
  s.state = SweepState::kPaused;
  return removed;
}

absl::StatusOr<bool> MemoryJobQueue::Resume(const SweepRef& sweep) {
  absl::MutexLock lock(&mu_);
  auto it = sweeps_.find(sweep.id);
  if (it == sweeps_.end() || !it->second.has_spec) return false;
  it->second.state = SweepState::kRunning;
  return true;
}

absl::StatusOr<bool> MemoryJobQueue::RemoveSweep(const SweepRef& sweep, const std::string& name,
                                                 const std::string& request_id) {
  // The name and request index is the sweep store's (in Redis the same
  // script deletes it): nothing of it lives here.
  absl::MutexLock lock(&mu_);
  auto it = sweeps_.find(sweep.id);
  if (it == sweeps_.end()) return false;
  Stream& stream = streams_[sweep.model];
  for (const auto& [index, id] : it->second.inflight) {
    stream.pending.erase(id);
    stream.entries.erase(id);
  }
  sweeps_.erase(it);
  return true;
}

absl::StatusOr<std::vector<LostJob>> MemoryJobQueue::FindLost(const SweepRef& sweep, absl::Duration lease) {
  absl::MutexLock lock(&mu_);
  std::vector<LostJob> lost;
  auto it = sweeps_.find(sweep.id);
  if (it == sweeps_.end()) return lost;
  const Stream& stream = streams_[sweep.model];
  for (const auto& [index, id] : it->second.inflight) {
    if (stream.entries.count(id)) continue;
    auto p = stream.pending.find(id);
    if (p == stream.pending.end() || Idle(p->second) >= lease) lost.push_back({index, IdText(id)});
  }
  return lost;
}

absl::StatusOr<std::optional<std::string>> MemoryJobQueue::Requeue(const SweepRef& sweep, const LostJob& lost,
                                                                   const std::string& job_id,
                                                                   const std::string& payload, absl::Duration lease) {
  absl::MutexLock lock(&mu_);
  auto it = sweeps_.find(sweep.id);
  const std::optional<uint64_t> old = ParseId(lost.stream_id);
  if (it == sweeps_.end() || !old) return std::nullopt;
  Sweep& s = it->second;
  auto recorded = s.inflight.find(lost.job_index);
  if (recorded == s.inflight.end() || recorded->second != *old) return std::nullopt;
  if (s.state != SweepState::kRunning) return std::nullopt;
  Stream& stream = streams_[sweep.model];
  if (stream.entries.count(*old)) return std::nullopt;
  auto p = stream.pending.find(*old);
  if (p != stream.pending.end()) {
    if (Idle(p->second) < lease) return std::nullopt;
    stream.pending.erase(p);
  }
  const uint64_t id = Append(stream, job_id, payload);
  recorded->second = id;
  return IdText(id);
}

absl::StatusOr<QueueDepth> MemoryJobQueue::Depth(const std::string& model) {
  absl::MutexLock lock(&mu_);
  const Stream& stream = streams_[model];
  return QueueDepth{static_cast<int64_t>(stream.entries.size()), static_cast<int64_t>(stream.pending.size())};
}

absl::StatusOr<std::optional<SweepCursor>> MemoryJobQueue::Cursor(const SweepRef& sweep) {
  absl::MutexLock lock(&mu_);
  auto it = sweeps_.find(sweep.id);
  if (it == sweeps_.end() || !it->second.has_spec) return std::nullopt;
  const Sweep& s = it->second;
  return SweepCursor{s.state.value_or(SweepState::kRunning), s.next_job.value_or(0), s.jobs_done};
}

absl::StatusOr<std::map<int64_t, std::string>> MemoryJobQueue::InFlight(const SweepRef& sweep) {
  absl::MutexLock lock(&mu_);
  std::map<int64_t, std::string> out;
  auto it = sweeps_.find(sweep.id);
  if (it == sweeps_.end()) return out;
  for (const auto& [index, id] : it->second.inflight) out[index] = IdText(id);
  return out;
}

absl::StatusOr<std::map<int64_t, std::string>> MemoryJobQueue::FailedItems(const SweepRef& sweep) {
  absl::MutexLock lock(&mu_);
  auto it = sweeps_.find(sweep.id);
  if (it == sweeps_.end()) return std::map<int64_t, std::string>();
  return it->second.failed_items;
}

absl::StatusOr<std::vector<DeadLetter>> MemoryJobQueue::DeadLetters(const std::string& model, int max_count) {
  absl::MutexLock lock(&mu_);
  const std::vector<DeadLetter>& dead = streams_[model].dead;
  const size_t n = std::min(dead.size(), static_cast<size_t>(std::max(max_count, 1)));
  return std::vector<DeadLetter>(dead.begin(), dead.begin() + static_cast<std::ptrdiff_t>(n));
}

}  // namespace sdfarm::queue
