#include "coordinator/job_queue.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sdfarm::coordinator {
namespace {

// Scripts run atomically on the server, which is what makes the owner checks
// and the ack + delete (+ dead-letter record) pairs race-free. redis.pcall
// turns NOGROUP (stream or group gone) into "not pending" instead of an error.
//
// KEYS[1] stream; ARGV: group, worker, id.  1 renewed, 0 not pending, -1 other owner.
constexpr char kRenewScript[] = R"lua(
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p.err or #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
)lua";

// KEYS[1] stream; ARGV: group, id.  Returns how many were acked (0 or 1).
constexpr char kAckScript[] = R"lua(
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return n
)lua";

// KEYS[1] stream; ARGV: group, worker, id.  1 acked, 0 not pending or other owner.
constexpr char kAckIfOwnerScript[] = R"lua(
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p.err or #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
)lua";

// KEYS[1] stream, KEYS[2] dead-letter stream; ARGV: group, id, job_id,
// payload, deliveries, error.  1 recorded, 0 not pending (nothing done).
constexpr char kDeadLetterScript[] = R"lua(
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', 'job', ARGV[3], 'payload', ARGV[4], 'stream_id', ARGV[2],
           'deliveries', ARGV[5], 'error', ARGV[6])
return 1
)lua";

// An entry [id, [field, value, ...]] into a job; deliveries is left to the caller.
absl::StatusOr<QueuedJob> ParseEntry(const RedisReply& entry) {
  const auto& e = entry.array();
  if (e.size() != 2 || !e[0].is_string()) {
    return absl::InternalError(absl::StrCat("unexpected stream entry: ", entry.DebugString()));
  }
  QueuedJob job;
  job.stream_id = e[0].str();
  const auto& fields = e[1].array();
  for (size_t i = 0; i + 1 < fields.size(); i += 2) {
    if (fields[i].str() == "job") job.job_id = fields[i + 1].str();
    if (fields[i].str() == "payload") job.payload = fields[i + 1].str();
  }
  return job;
}

bool IsGone(const absl::Status& s) {
  // NOGROUP: the stream or its group does not exist (deleted under us).
  // UNBLOCKED: Redis >= 7.2 wakes blocked readers of a deleted stream this way.
  return s.code() == absl::StatusCode::kNotFound ||
         s.message().find("UNBLOCKED") != absl::string_view::npos;
}

}  // namespace

JobQueue::JobQueue(RedisClient* redis, std::string prefix) : redis_(redis), prefix_(std::move(prefix)) {}

absl::Status JobQueue::EnsureGroup(const std::string& model) {
  // From ID 0, not $: jobs enqueued before the group existed must be delivered.
  auto r = redis_->Command({"XGROUP", "CREATE", StreamKey(model), kGroup, "0", "MKSTREAM"});
  if (!r.ok() && r.status().code() != absl::StatusCode::kAlreadyExists) return r.status();
  return absl::OkStatus();
}

absl::StatusOr<std::string> JobQueue::Enqueue(const std::string& model, const std::string& job_id,
                                              const std::string& payload) {
  // No MAXLEN: trimming could drop jobs that are pending or not yet delivered.
  ASSIGN_OR_RETURN(RedisReply r, redis_->Command({"XADD", StreamKey(model), "*", "job", job_id, "payload", payload}));
  return r.AsString();
}

absl::StatusOr<std::optional<QueuedJob>> JobQueue::ReadOne(const std::string& model, const std::string& worker,
                                                           absl::Duration wait) {
  std::vector<std::string> argv = {"XREADGROUP", "GROUP", kGroup, worker, "COUNT", "1"};
  const int64_t block_ms = absl::ToInt64Milliseconds(wait);
  // BLOCK 0 would mean "forever"; a zero wait is a plain non-blocking read.
  if (block_ms > 0) argv.insert(argv.end(), {"BLOCK", absl::StrCat(block_ms)});
  argv.insert(argv.end(), {"STREAMS", StreamKey(model), ">"});
  ASSIGN_OR_RETURN(RedisReply r,
                   redis_->CommandWithTimeout(argv, wait + redis_->options().command_timeout));
  if (r.is_nil() || r.array().empty()) return std::nullopt;
  const auto& entries = r.array()[0].array().size() == 2 ? r.array()[0].array()[1].array()
                                                          : RedisReply().array();
  if (entries.empty()) return std::nullopt;
  ASSIGN_OR_RETURN(QueuedJob job, ParseEntry(entries[0]));
  job.deliveries = 1;  // ">" only hands out never-delivered entries
  return job;
}

absl::StatusOr<std::optional<QueuedJob>> JobQueue::Claim(const std::string& model, const std::string& worker,
                                                          absl::Duration wait) {
  const absl::Time deadline = absl::Now() + std::max(wait, absl::ZeroDuration());
  auto job = ReadOne(model, worker, std::max(wait, absl::ZeroDuration()));
  if (job.ok() || !IsGone(job.status())) return job;
  // The group (or the whole stream) is missing: first use, or deleted under
  // us. Recreate it and read again with what is left of the wait.
  RETURN_IF_ERROR(EnsureGroup(model));
  return ReadOne(model, worker, std::max(deadline - absl::Now(), absl::ZeroDuration()));
}

absl::StatusOr<std::vector<QueuedJob>> JobQueue::ReclaimExpired(const std::string& model, const std::string& worker,
                                                                absl::Duration lease, int max_count) {
  if (lease <= absl::ZeroDuration()) return absl::InvalidArgumentError("ReclaimExpired: lease must be positive");
  if (max_count <= 0) return absl::InvalidArgumentError("ReclaimExpired: max_count must be positive");
  const std::string key = StreamKey(model);
  const std::string min_idle = absl::StrCat(absl::ToInt64Milliseconds(lease));
  std::vector<QueuedJob> taken;
  std::string cursor = "0-0";
  // XAUTOCLAIM scans a bounded slice of the pending list per call; follow the
  // cursor around the list once (bounded, in case it keeps growing).
  for (int round = 0; round < 100 && static_cast<int>(taken.size()) < max_count; ++round) {
    auto r = redis_->Command({"XAUTOCLAIM", key, kGroup, worker, min_idle, cursor, "COUNT",
                              absl::StrCat(max_count - static_cast<int>(taken.size()))});
    if (!r.ok()) {
      if (IsGone(r.status())) return taken;  // no stream or group: nothing pending
      return r.status();
    }
    const auto& a = r->array();
    if (a.size() < 2) return absl::InternalError(absl::StrCat("unexpected XAUTOCLAIM reply: ", r->DebugString()));
    cursor = a[0].str();
    for (const RedisReply& entry : a[1].array()) {
      if (entry.is_nil()) continue;
      ASSIGN_OR_RETURN(QueuedJob job, ParseEntry(entry));
      // XAUTOCLAIM does not report delivery counts; XPENDING does (and
      // confirms we still own it).
      ASSIGN_OR_RETURN(RedisReply p, redis_->Command({"XPENDING", key, kGroup, job.stream_id, job.stream_id, "1"}));
      if (p.array().empty()) continue;  // acked meanwhile
      const auto& info = p.array()[0].array();
      if (info.size() != 4 || info[1].str() != worker) continue;  // taken by someone else meanwhile
      ASSIGN_OR_RETURN(job.deliveries, info[3].AsInt());
      taken.push_back(std::move(job));
    }
    if (cursor == "0-0") break;
  }
  return taken;
}

absl::Status JobQueue::Renew(const std::string& model, const std::string& worker, const std::string& stream_id) {
  ASSIGN_OR_RETURN(RedisReply r,
                   redis_->Command({"EVAL", kRenewScript, "1", StreamKey(model), kGroup, worker, stream_id}));
  ASSIGN_OR_RETURN(int64_t result, r.AsInt());
  if (result == 0) {
    return absl::NotFoundError(absl::StrCat("job ", stream_id, " of model ", model,
                                            " is no longer pending (acked, dead-lettered or unknown)"));
  }
  if (result < 0) {
    return absl::FailedPreconditionError(absl::StrCat("job ", stream_id, " of model ", model,
                                                      " is owned by another worker now; ", worker,
                                                      " lost its lease"));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> JobQueue::IsOwner(const std::string& model, const std::string& worker,
                                       const std::string& stream_id) {
  auto r = redis_->Command({"XPENDING", StreamKey(model), kGroup, stream_id, stream_id, "1"});
  if (!r.ok()) {
    if (IsGone(r.status())) return false;
    return r.status();
  }
  if (r->array().empty()) return false;
  const auto& info = r->array()[0].array();
  return info.size() == 4 && info[1].str() == worker;
}

absl::Status JobQueue::Ack(const std::string& model, const std::string& stream_id) {
  return redis_->Command({"EVAL", kAckScript, "1", StreamKey(model), kGroup, stream_id}).status();
}

absl::StatusOr<bool> JobQueue::AckIfOwner(const std::string& model, const std::string& worker,
                                          const std::string& stream_id) {
  ASSIGN_OR_RETURN(RedisReply r,
                   redis_->Command({"EVAL", kAckIfOwnerScript, "1", StreamKey(model), kGroup, worker, stream_id}));
  ASSIGN_OR_RETURN(int64_t acked, r.AsInt());
  return acked == 1;
}

absl::Status JobQueue::DeadLetter(const std::string& model, const QueuedJob& job, const std::string& error) {
  return redis_
      ->Command({"EVAL", kDeadLetterScript, "2", StreamKey(model), DeadLetterKey(model), kGroup, job.stream_id,
                 job.job_id, job.payload, absl::StrCat(job.deliveries), error})
      .status();
}

absl::StatusOr<std::vector<DeadLetteredJob>> JobQueue::DeadLetters(const std::string& model, int max_count) {
  ASSIGN_OR_RETURN(RedisReply r, redis_->Command({"XRANGE", DeadLetterKey(model), "-", "+", "COUNT",
                                                  absl::StrCat(std::max(max_count, 1))}));
  std::vector<DeadLetteredJob> out;
  for (const RedisReply& entry : r.array()) {
    const auto& e = entry.array();
    if (e.size() != 2) continue;
    DeadLetteredJob d;
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

absl::StatusOr<int64_t> JobQueue::Pending(const std::string& model) {
  auto r = redis_->Command({"XPENDING", StreamKey(model), kGroup});
  if (!r.ok()) {
    if (IsGone(r.status())) return 0;
    return r.status();
  }
  if (r->array().empty()) return absl::InternalError(absl::StrCat("unexpected XPENDING reply: ", r->DebugString()));
  return r->array()[0].AsInt();
}

absl::StatusOr<int64_t> JobQueue::Length(const std::string& model) {
  ASSIGN_OR_RETURN(RedisReply r, redis_->Command({"XLEN", StreamKey(model)}));
  return r.AsInt();
}

}  // namespace sdfarm::coordinator
