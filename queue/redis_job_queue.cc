// The job queue in Redis (see redis_job_queue.h; the scripts in queue/lua/).
#include "queue/redis_job_queue.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "queue/lua_scripts.h"

namespace sdfarm::queue {
namespace {

// The scripts that check the binding in their own step carry its function.
const std::string& WithBinding(const char* script) {
  // One string per script, built once (the scripts are constants).
  static absl::Mutex mu(absl::kConstInit);
  static auto* built = new std::map<const char*, std::string>();
  absl::MutexLock lock(&mu);
  auto it = built->find(script);
  if (it == built->end()) it = built->emplace(script, absl::StrCat(lua::kBinding, script)).first;
  return it->second;
}

Binding BindingFromCode(int64_t code) {
  if (code == 1) return Binding::kBound;
  if (code == -2) return Binding::kMismatch;
  if (code == 0) return Binding::kGone;
  return Binding::kNotHeld;
}

// {id, job, payload[, deliveries]} as the claim scripts answer.
absl::StatusOr<std::optional<Delivery>> DeliveryFromReply(const RedisReply& r, const std::string& model,
                                                          const std::string& worker) {
  if (!r.is_array()) return std::nullopt;  // false -> nil: nothing
  const auto& a = r.array();
  if (a.size() < 3) return absl::InternalError(absl::StrCat("unexpected claim reply: ", r.DebugString()));
  Delivery d;
  d.model = model;
  d.owner = worker;
  d.stream_id = a[0].str();
  d.job_id = a[1].str();
  d.payload = a[2].str();
  d.deliveries = 1;
  if (a.size() >= 4) {
    ASSIGN_OR_RETURN(d.deliveries, a[3].AsInt());
  }
  return d;
}

// {code, value} as finish.lua and fail.lua answer.
absl::StatusOr<std::pair<int64_t, int64_t>> Pair(const RedisReply& r) {
  if (r.array().size() != 2) return absl::InternalError(absl::StrCat("unexpected script reply: ", r.DebugString()));
  ASSIGN_OR_RETURN(int64_t code, r.array()[0].AsInt());
  ASSIGN_OR_RETURN(int64_t value, r.array()[1].AsInt());
  return std::make_pair(code, value);
}

absl::StatusOr<std::map<int64_t, std::string>> IndexMap(const RedisReply& r) {
  std::map<int64_t, std::string> out;
  const auto& a = r.array();
  for (size_t i = 0; i + 1 < a.size(); i += 2) {
    int64_t index = 0;
    if (!absl::SimpleAtoi(a[i].str(), &index)) {
      return absl::InternalError(absl::StrCat("not a job or item index: ", a[i].DebugString()));
    }
    out[index] = a[i + 1].str();
  }
  return out;
}

std::string Ms(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d)); }

bool IsNoGroup(const absl::Status& s) { return s.code() == absl::StatusCode::kNotFound; }

}  // namespace

RedisJobQueue::RedisJobQueue(RedisJobQueueOptions options)
    : options_(std::move(options)), keys_(options_.key_prefix) {}

RedisJobQueue::~RedisJobQueue() = default;

RedisJobQueue::Connection::~Connection() {
  if (!client_) return;
  absl::MutexLock lock(&owner_->mu_);
  if (static_cast<int>(owner_->free_.size()) < owner_->options_.max_idle_connections) {
    owner_->free_.push_back(std::move(client_));
  }
}

absl::StatusOr<RedisJobQueue::Connection> RedisJobQueue::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    if (!free_.empty()) {
      std::unique_ptr<RedisClient> c = std::move(free_.back());
      free_.pop_back();
      return Connection(this, std::move(c));
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<RedisClient> c, RedisClient::Connect(options_.redis));
  return Connection(this, std::move(c));
}

absl::StatusOr<RedisReply> RedisJobQueue::Guarded(RedisClient* redis, std::vector<std::string> argv) {
  if (options_.guard) return options_.guard(redis, std::move(argv));
  return redis->Command(argv);
}

absl::StatusOr<EnqueueResult> RedisJobQueue::Enqueue(const SweepRef& sweep, int64_t job_index,
                                                     const std::string& job_id, const std::string& payload) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, Guarded(c.get(), {"EVAL", lua::kEnqueue, "3", keys_.Stream(sweep.model),
                                                   keys_.Sweep(sweep.id), keys_.InFlight(sweep.id), kGroup,
                                                   absl::StrCat(job_index), job_id, payload}));
  if (!r.is_string()) return EnqueueResult{};
  return EnqueueResult{EnqueueOutcome::kEnqueued, r.str()};
}

absl::StatusOr<std::optional<int64_t>> RedisJobQueue::SkipRecorded(const SweepRef& sweep, int64_t from, int64_t to) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, Guarded(c.get(), {"EVAL", lua::kSkipRecorded, "1", keys_.Sweep(sweep.id),
                                                   absl::StrCat(from), absl::StrCat(to)}));
  if (r.is_nil()) return std::nullopt;
  ASSIGN_OR_RETURN(int64_t jobs_done, r.AsInt());
  return jobs_done;
}

absl::StatusOr<OwnRedelivery> RedisJobQueue::RedeliverOwn(const std::string& model, const std::string& worker,
                                                          const std::set<std::string>& handed) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  const std::string stream = keys_.Stream(model);
  OwnRedelivery out;
  auto pending = c->Command({"XPENDING", stream, kGroup, "-", "+", absl::StrCat(kMaxOwnPendingSeen), worker});
  if (!pending.ok()) {
    if (!IsNoGroup(pending.status())) return pending.status();
    out.pending.emplace();  // no group: nothing pending
    return out;
  }
  if (static_cast<int>(pending->array().size()) < kMaxOwnPendingSeen) {
    out.pending.emplace();
    for (const RedisReply& entry : pending->array()) {
      if (!entry.array().empty() && entry.array()[0].is_string()) out.pending->insert(entry.array()[0].str());
    }
  }
  for (const RedisReply& entry : pending->array()) {
    if (entry.array().empty() || !entry.array()[0].is_string()) continue;
    const std::string& id = entry.array()[0].str();
    if (handed.count(id)) continue;
    ASSIGN_OR_RETURN(RedisReply r, Guarded(c.get(), {"EVAL", lua::kRedeliverOwn, "1", stream, kGroup, worker, id}));
    ASSIGN_OR_RETURN(out.delivery, DeliveryFromReply(r, model, worker));
    if (out.delivery) return out;
  }
  return out;
}

absl::StatusOr<std::optional<Delivery>> RedisJobQueue::ReclaimExpired(const std::string& model,
                                                                      const std::string& worker,
                                                                      absl::Duration lease) {
  if (lease <= absl::ZeroDuration()) return absl::InvalidArgumentError("ReclaimExpired: the lease must be positive");
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, Guarded(c.get(), {"EVAL", lua::kReclaimExpired, "1", keys_.Stream(model), kGroup,
                                                   worker, Ms(lease)}));
  return DeliveryFromReply(r, model, worker);
}

absl::StatusOr<std::optional<Delivery>> RedisJobQueue::ClaimNew(const std::string& model, const std::string& worker) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r,
                   Guarded(c.get(), {"EVAL", lua::kClaimNew, "1", keys_.Stream(model), kGroup, worker}));
  return DeliveryFromReply(r, model, worker);
}

absl::StatusOr<bool> RedisJobQueue::AwaitingReclaim(const std::string& model, const std::string& stream_id,
                                                    absl::Duration lease) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  auto p = c->Command({"XPENDING", keys_.Stream(model), kGroup, "IDLE", Ms(lease), stream_id, stream_id, "1"});
  if (!p.ok()) {
    if (IsNoGroup(p.status())) return false;
    return p.status();
  }
  return !p->array().empty();
}

absl::StatusOr<Binding> RedisJobQueue::RunBinding(const HeldJob& job, bool renew) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  std::vector<std::string> argv = {"EVAL", WithBinding(renew ? lua::kRenew : lua::kCheckBinding), "2",
                                   keys_.Stream(job.sweep.model), keys_.InFlight(job.sweep.id), kGroup, job.worker,
                                   job.stream_id, job.job_id, absl::StrCat(job.job_index)};
  ASSIGN_OR_RETURN(RedisReply r, renew ? Guarded(c.get(), std::move(argv)) : c->Command(argv));
  ASSIGN_OR_RETURN(int64_t code, r.AsInt());
  return BindingFromCode(code);
}

absl::StatusOr<Binding> RedisJobQueue::Check(const HeldJob& job) { return RunBinding(job, false); }

absl::StatusOr<Binding> RedisJobQueue::Renew(const HeldJob& job) { return RunBinding(job, true); }

absl::StatusOr<FinishResult> RedisJobQueue::Finish(const HeldJob& job) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r,
                   Guarded(c.get(), {"EVAL", WithBinding(lua::kFinish), "3", keys_.Stream(job.sweep.model),
                                     keys_.Sweep(job.sweep.id), keys_.InFlight(job.sweep.id), kGroup, job.worker,
                                     job.stream_id, absl::StrCat(job.job_index), job.job_id}));
  ASSIGN_OR_RETURN(auto p, Pair(r));
  FinishResult out;
  out.jobs_done = p.second;
  switch (BindingFromCode(p.first)) {
    case Binding::kBound: out.outcome = FinishOutcome::kFinished; break;
    case Binding::kGone: out.outcome = FinishOutcome::kGone; break;
    case Binding::kNotHeld: out.outcome = FinishOutcome::kNotHeld; break;
    case Binding::kMismatch: out.outcome = FinishOutcome::kMismatch; break;
  }
  return out;
}

absl::StatusOr<FailResult> RedisJobQueue::Fail(const HeldJob& job, const FailRequest& request) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  const std::string& id = job.sweep.id;
  std::vector<std::string> argv = {"EVAL", WithBinding(lua::kFail), "6", keys_.Stream(job.sweep.model),
                                   keys_.Sweep(id), keys_.InFlight(id), keys_.Failures(id), keys_.FailedItems(id),
                                   keys_.DeadLetters(job.sweep.model), kGroup, job.worker, job.stream_id,
                                   absl::StrCat(job.job_index), absl::StrCat(request.max_attempts),
                                   Ms(request.release_idle), request.retryable ? "1" : "0", request.error,
                                   job.job_id, request.payload, kReleasedConsumer};
  for (int64_t item : request.failed_items) argv.push_back(absl::StrCat(item));
  ASSIGN_OR_RETURN(RedisReply r, Guarded(c.get(), std::move(argv)));
  ASSIGN_OR_RETURN(auto p, Pair(r));
  FailResult out;
  switch (p.first) {
    case 1: out.outcome = FailOutcome::kReleased; out.attempt = p.second; break;
    case 2: out.outcome = FailOutcome::kDeadLettered; out.jobs_done = p.second; break;
    case 0: out.outcome = FailOutcome::kGone; break;
    case -2: out.outcome = FailOutcome::kMismatch; break;
    default: out.outcome = FailOutcome::kNotHeld; break;
  }
  return out;
}

absl::StatusOr<HoldOutcome> RedisJobQueue::HoldForStorage(const std::string& model, const std::string& worker,
                                                          const std::string& stream_id) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, Guarded(c.get(), {"EVAL", lua::kHoldForStorage, "1", keys_.Stream(model), kGroup,
                                                   worker, stream_id}));
  ASSIGN_OR_RETURN(int64_t code, r.AsInt());
  if (code == 1) return HoldOutcome::kTakenOut;
  if (code == 0) return HoldOutcome::kNotPending;
  return HoldOutcome::kOtherOwner;
}

absl::StatusOr<int64_t> RedisJobQueue::Cancel(const SweepRef& sweep) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, Guarded(c.get(), {"EVAL", lua::kCancel, "3", keys_.Stream(sweep.model),
                                                   keys_.InFlight(sweep.id), keys_.Sweep(sweep.id), kGroup}));
  return r.AsInt();
}

absl::StatusOr<int64_t> RedisJobQueue::Pause(const SweepRef& sweep, PauseScope scope) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r,
                   Guarded(c.get(), {"EVAL", lua::kPause, "3", keys_.Stream(sweep.model), keys_.InFlight(sweep.id),
                                     keys_.Sweep(sweep.id), kGroup, scope == PauseScope::kAll ? "all" : ""}));
  return r.AsInt();
}

absl::StatusOr<bool> RedisJobQueue::Resume(const SweepRef& sweep) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, Guarded(c.get(), {"EVAL", lua::kResume, "1", keys_.Sweep(sweep.id)}));
  ASSIGN_OR_RETURN(int64_t resumed, r.AsInt());
  return resumed == 1;
}

absl::StatusOr<bool> RedisJobQueue::RemoveSweep(const SweepRef& sweep, const std::string& name,
                                                const std::string& request_id) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  const std::string& id = sweep.id;
  ASSIGN_OR_RETURN(RedisReply r,
                   Guarded(c.get(), {"EVAL", lua::kRemoveSweep, "8", keys_.Sweep(id), keys_.InFlight(id),
                                     keys_.Failures(id), keys_.FailedItems(id), keys_.Request(request_id),
                                     keys_.Name(name), keys_.Sweeps(), keys_.Stream(sweep.model), id, kGroup}));
  ASSIGN_OR_RETURN(int64_t removed, r.AsInt());
  return removed == 1;
}

absl::StatusOr<std::vector<LostJob>> RedisJobQueue::FindLost(const SweepRef& sweep, absl::Duration lease) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, c->Command({"EVAL", lua::kFindLost, "2", keys_.Stream(sweep.model),
                                             keys_.InFlight(sweep.id), kGroup, Ms(lease)}));
  ASSIGN_OR_RETURN(auto lost, IndexMap(r));
  std::vector<LostJob> out;
  for (auto& [index, id] : lost) out.push_back({index, std::move(id)});
  return out;
}

absl::StatusOr<std::optional<std::string>> RedisJobQueue::Requeue(const SweepRef& sweep, const LostJob& lost,
                                                                  const std::string& job_id,
                                                                  const std::string& payload, absl::Duration lease) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r,
                   Guarded(c.get(), {"EVAL", lua::kRequeueLost, "3", keys_.Stream(sweep.model), keys_.Sweep(sweep.id),
                                     keys_.InFlight(sweep.id), kGroup, absl::StrCat(lost.job_index), lost.stream_id,
                                     job_id, payload, Ms(lease)}));
  if (!r.is_string()) return std::nullopt;
  return r.str();
}

absl::StatusOr<QueueDepth> RedisJobQueue::Depth(const std::string& model) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  const std::string stream = keys_.Stream(model);
  ASSIGN_OR_RETURN(RedisReply length, c->Command({"XLEN", stream}));
  ASSIGN_OR_RETURN(int64_t total, length.AsInt());
  QueueDepth d;
  auto p = c->Command({"XPENDING", stream, kGroup});
  if (!p.ok() && !IsNoGroup(p.status())) return p.status();
  if (p.ok()) {
    if (p->array().empty()) return absl::InternalError(absl::StrCat("unexpected XPENDING reply: ", p->DebugString()));
    ASSIGN_OR_RETURN(d.pending, p->array()[0].AsInt());
  }
  d.length = total;
  return d;
}

absl::StatusOr<std::optional<SweepCursor>> RedisJobQueue::Cursor(const SweepRef& sweep) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, c->Command({"HMGET", keys_.Sweep(sweep.id), "spec", "state", "next_job", "jobs_done"}));
  if (r.array().size() != 4) return absl::InternalError(absl::StrCat("unexpected HMGET reply: ", r.DebugString()));
  if (r.array()[0].is_nil()) return std::nullopt;
  SweepCursor cursor;
  cursor.state = ParseSweepState(r.array()[1].str()).value_or(SweepState::kRunning);
  if (!r.array()[2].is_nil()) {
    ASSIGN_OR_RETURN(cursor.next_job, r.array()[2].AsInt());
  }
  if (!r.array()[3].is_nil()) {
    ASSIGN_OR_RETURN(cursor.jobs_done, r.array()[3].AsInt());
  }
  return cursor;
}

absl::StatusOr<std::map<int64_t, std::string>> RedisJobQueue::InFlight(const SweepRef& sweep) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, c->Command({"HGETALL", keys_.InFlight(sweep.id)}));
  return IndexMap(r);
}

absl::StatusOr<std::map<int64_t, std::string>> RedisJobQueue::FailedItems(const SweepRef& sweep) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, c->Command({"HGETALL", keys_.FailedItems(sweep.id)}));
  return IndexMap(r);
}

absl::StatusOr<std::vector<DeadLetter>> RedisJobQueue::DeadLetters(const std::string& model, int max_count) {
  ASSIGN_OR_RETURN(Connection c, Acquire());
  ASSIGN_OR_RETURN(RedisReply r, c->Command({"XRANGE", keys_.DeadLetters(model), "-", "+", "COUNT",
                                             absl::StrCat(std::max(max_count, 1))}));
  std::vector<DeadLetter> out;
  for (const RedisReply& entry : r.array()) {
    const auto& e = entry.array();
    if (e.size() != 2) continue;
    DeadLetter d;
    d.dead_id = e[0].str();
    const auto& f = e[1].array();
    for (size_t i = 0; i + 1 < f.size(); i += 2) {
      const std::string& name = f[i].str();
      const std::string& value = f[i + 1].str();
      if (name == "job") d.job_id = value;
      else if (name == "payload") d.payload = value;
      else if (name == "stream_id") d.stream_id = value;
      else if (name == "error") d.error = value;
      else if (name == "deliveries") d.deliveries = f[i + 1].AsInt().value_or(0);
    }
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace sdfarm::queue
