#include "coordinator/job_binding.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace sdfarm::coordinator {

// XPENDING on a missing stream or group is an error (NOGROUP): redis.pcall
// turns it into "not pending". HGET answers false for a missing field: the
// job is not in flight any more (finished, cancelled), so not held either.
const char kBindingLua[] = R"lua(
local function sdfarm_binding(stream, inflight, group, consumer, id, job_id, job_index)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if p.err or #p == 0 then
    if redis.call('HGET', inflight, job_index) == id then return -1 end
    return 0
  end
  if p[1][2] ~= consumer then return -1 end
  local e = redis.call('XRANGE', stream, id, id)
  if #e == 0 then return 0 end
  local f = e[1][2]
  local job = nil
  for i = 1, #f, 2 do
    if f[i] == 'job' then job = f[i + 1] end
  end
  if job ~= job_id then return -2 end
  local recorded = redis.call('HGET', inflight, job_index)
  if not recorded then return 0 end
  if recorded ~= id then return -2 end
  return 1, p[1]
end
)lua";

namespace {

// KEYS: stream, inflight. ARGV: group, consumer, id, job id, job index, renew (1/0).
const std::string& CheckScript() {
  static const std::string* script = new std::string(absl::StrCat(kBindingLua, R"lua(
local code = sdfarm_binding(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if code == 1 and ARGV[6] == '1' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
end
return code
)lua"));
  return *script;
}

// KEYS: stream. ARGV: group, consumer, id. The entry delivered to the same
// consumer again: {id, job, payload, deliveries}, or false when it is not
// (any more) pending for it or its message is gone.
constexpr char kRedeliverScript[] = R"lua(
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p.err or #p == 0 or p[1][2] ~= ARGV[2] then return false end
local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if #c == 0 or type(c[1]) ~= 'table' then return false end
local f = c[1][2]
local job, payload = '', ''
for i = 1, #f, 2 do
  if f[i] == 'job' then job = f[i + 1] elseif f[i] == 'payload' then payload = f[i + 1] end
end
return {ARGV[3], job, payload, p[1][4] + 1}
)lua";

absl::StatusOr<Binding> RunCheck(RedisClient* redis, const DeliveryRef& d, bool renew) {
  ASSIGN_OR_RETURN(RedisReply r, redis->Command({"EVAL", CheckScript(), "2", d.stream_key, d.inflight_key,
                                                 JobQueue::kGroup, d.worker, d.stream_id, d.job_id,
                                                 absl::StrCat(d.job_index), renew ? "1" : "0"}));
  ASSIGN_OR_RETURN(int64_t code, r.AsInt());
  return BindingFromCode(code);
}

}  // namespace

Binding BindingFromCode(int64_t code) {
  if (code == 1) return Binding::kBound;
  if (code == -2) return Binding::kMismatch;
  if (code == 0) return Binding::kGone;
  return Binding::kNotHeld;
}

absl::StatusOr<Binding> CheckBinding(RedisClient* redis, const DeliveryRef& d) { return RunCheck(redis, d, false); }

absl::StatusOr<Binding> RenewBinding(RedisClient* redis, const DeliveryRef& d) { return RunCheck(redis, d, true); }

absl::StatusOr<std::optional<QueuedJob>> RedeliverOwn(RedisClient* redis, const std::string& stream_key,
                                                       const std::string& worker, const std::set<std::string>& skip,
                                                       std::set<std::string>* pending_out, bool* complete) {
  constexpr int kMaxSeen = 50;
  *complete = false;
  pending_out->clear();
  auto pending = redis->Command({"XPENDING", stream_key, JobQueue::kGroup, "-", "+", absl::StrCat(kMaxSeen), worker});
  if (!pending.ok()) {
    if (pending.status().code() == absl::StatusCode::kNotFound) {  // NOGROUP: nothing pending
      *complete = true;
      return std::nullopt;
    }
    return pending.status();
  }
  *complete = static_cast<int>(pending->array().size()) < kMaxSeen;
  for (const RedisReply& entry : pending->array()) {
    if (!entry.array().empty() && entry.array()[0].is_string() && *complete) pending_out->insert(entry.array()[0].str());
  }
  for (const RedisReply& entry : pending->array()) {
    if (entry.array().empty() || !entry.array()[0].is_string()) continue;
    const std::string& id = entry.array()[0].str();
    if (skip.count(id)) continue;
    ASSIGN_OR_RETURN(RedisReply r, redis->Command({"EVAL", kRedeliverScript, "1", stream_key, JobQueue::kGroup,
                                                   worker, id}));
    if (!r.is_array() || r.array().size() != 4) continue;
    QueuedJob job;
    job.stream_id = r.array()[0].str();
    job.job_id = r.array()[1].str();
    job.payload = r.array()[2].str();
    ASSIGN_OR_RETURN(job.deliveries, r.array()[3].AsInt());
    return std::optional<QueuedJob>(std::move(job));
  }
  return std::nullopt;
}

}  // namespace sdfarm::coordinator
