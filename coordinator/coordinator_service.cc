#include "coordinator/coordinator_service.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_util.h"
#include "common/job_payload.h"
#include "common/log_time.h"
#include "common/monotonic_clock.h"
#include "common/status_macros.h"
#include "coordinator/default_size.h"
#include "coordinator/idle_stream_watchdog.h"
#include "coordinator/job_binding.h"
#include "coordinator/job_queue.h"
#include "coordinator/leader_lease.h"
#include "coordinator/metadata_row.h"
#include "coordinator/output_root_lock.h"
#include "coordinator/png_header_check.h"
#include "coordinator/sweep_adopt.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_folder_reader.h"
#include "coordinator/sweep_output.h"
#include "coordinator/throughput.h"
#include "coordinator/worker_sessions.h"
#include "sdfarm.grpc.pb.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"
#include "worker/engine/sha256.h"

namespace sdfarm::coordinator {
namespace pb = ::sdfarm::v1;
namespace {

// ------------------------------------------------------------------ logging --

void Log(const std::string& line) {
  // One write per line, so lines of concurrent handlers never interleave.
  const std::string out = LogTimestamp() + " sdfarm-coordinator: " + line + "\n";
  std::fwrite(out.data(), 1, out.size(), stderr);
}

std::string RandomHex(int bytes) {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  std::string out;
  for (int i = 0; i < bytes; ++i) absl::StrAppend(&out, absl::Hex(rng() & 0xff, absl::kZeroPad2));
  return out;
}

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

// The first words of a prompt, for a warning line.
std::string PromptHead(const std::string& prompt) {
  constexpr size_t kMax = 40;
  if (prompt.size() <= kMax) return prompt;
  size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(prompt[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 character
  return prompt.substr(0, cut) + "...";
}

// Whitespace-separated words: a lower bound of a prompt's CLIP tokens.
int CountWords(const std::string& text) {
  int n = 0;
  bool in_word = false;
  for (char c : text) {
    const bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

// ------------------------------------------------------------- Redis pool --

// RedisClient is one connection and not thread-safe; handlers borrow one.
class RedisPool {
 public:
  explicit RedisPool(RedisOptions options) : options_(std::move(options)) {}

  class Handle {
   public:
    Handle(RedisPool* pool, std::unique_ptr<RedisClient> client) : pool_(pool), client_(std::move(client)) {}
    Handle(Handle&&) = default;
    ~Handle() {
      if (client_) pool_->Release(std::move(client_));
    }
    RedisClient* get() { return client_.get(); }
    RedisClient* operator->() { return client_.get(); }

   private:
    RedisPool* pool_;
    std::unique_ptr<RedisClient> client_;
  };

  absl::StatusOr<Handle> Acquire() {
    {
      absl::MutexLock lock(&mu_);
      if (!free_.empty()) {
        auto c = std::move(free_.back());
        free_.pop_back();
        return Handle(this, std::move(c));
      }
    }
    auto c = RedisClient::Connect(options_);
    if (!c.ok()) {
      // Refused credentials are a configuration error, not an outage: no
      // retrying cures them (and UNAUTHENTICATED would blame the caller's token).
      if (IsRedisAuthError(c.status())) {
        return absl::FailedPreconditionError(
            absl::StrCat("Redis refuses the coordinator's credentials (check the password in --redis-url): ",
                         c.status().message()));
      }
      return absl::UnavailableError(absl::StrCat("Redis: ", c.status().message()));
    }
    return Handle(this, std::move(*c));
  }

 private:
  void Release(std::unique_ptr<RedisClient> c) {
    absl::MutexLock lock(&mu_);
    if (free_.size() < 64) free_.push_back(std::move(c));
  }

  RedisOptions options_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<RedisClient>> free_ ABSL_GUARDED_BY(mu_);
};

// ------------------------------------------------------------ Lua scripts --
// The coordinator's composite state changes, each atomic on the server so a
// crash at any point leaves Redis consistent.

// KEYS: request key, name key, sweep hash, sweeps zset.
// ARGV: id, name, created_ms, field, value, ...
// Returns {0, id} created, {1, id} the request id already made sweep id,
// {2, id} the name belongs to sweep id.
constexpr char kCreateSweepScript[] = R"lua(
local existing = redis.call('GET', KEYS[1])
if existing then return {1, existing} end
local owner = redis.call('GET', KEYS[2])
if owner then return {2, owner} end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], unpack(ARGV, 4))
return {0, ARGV[1]}
)lua";

// KEYS: stream, sweep hash, inflight hash. ARGV: job index (== expected
// next_job), job id, payload. Returns the stream id, or nil when the sweep is
// not running or next_job moved (another coordinator instance enqueued it).
constexpr char kEnqueueScript[] = R"lua(
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return false end
if redis.call('HGET', KEYS[2], 'next_job') ~= ARGV[1] then return false end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2], 'payload', ARGV[3])
redis.call('HSET', KEYS[2], 'next_job', tonumber(ARGV[1]) + 1)
redis.call('HSET', KEYS[3], ARGV[1], id)
return id
)lua";

// KEYS: stream, sweep hash, inflight hash. ARGV: group, worker, stream id,
// job index, job id. Returns {1, jobs_done} acked, {0, jobs_done} not pending
// (already finished), {-1, jobs_done} another worker owns it, {-2,
// jobs_done} the delivery is not that job (job_binding.h): nothing done.
const std::string kFinishJobScript = absl::StrCat(kBindingLua, R"lua(
local jd = tonumber(redis.call('HGET', KEYS[2], 'jobs_done') or '0')
local code = sdfarm_binding(KEYS[1], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[4])
if code ~= 1 then return {code, jd} end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if redis.call('HDEL', KEYS[3], ARGV[4]) == 1 then
  jd = redis.call('HINCRBY', KEYS[2], 'jobs_done', 1)
end
return {1, jd}
)lua");

// KEYS: stream, sweep hash, inflight hash, failures hash, failed-items hash,
// dead-letter stream. ARGV: group, worker, stream id, job index, max
// attempts, idle ms for release, retryable (1/0), error, job id, payload,
// item index...  Returns {-1, 0} other owner, {0, 0} not pending, {-2, 0}
// the delivery is not that job (job_binding.h; nothing counted), {1, n}
// released for attempt n+1, {2, jobs_done} dead-lettered (items failed).
const std::string kFailJobScript = absl::StrCat(kBindingLua, R"lua(
local code, pe = sdfarm_binding(KEYS[1], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[9], ARGV[4])
if code ~= 1 then return {code, 0} end
local n = redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
if ARGV[7] == '1' and n < tonumber(ARGV[5]) then
  redis.call('XCLAIM', KEYS[1], ARGV[1], 'sdfarm-released', 0, ARGV[3], 'IDLE', ARGV[6], 'JUSTID')
  return {1, n}
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[6], '*', 'job', ARGV[9], 'payload', ARGV[10], 'stream_id', ARGV[3],
           'deliveries', pe[4], 'error', ARGV[8])
for i = 11, #ARGV do redis.call('HSET', KEYS[5], ARGV[i], ARGV[8]) end
local jd = tonumber(redis.call('HGET', KEYS[2], 'jobs_done') or '0')
if redis.call('HDEL', KEYS[3], ARGV[4]) == 1 then
  jd = redis.call('HINCRBY', KEYS[2], 'jobs_done', 1)
end
return {2, jd}
)lua");

// KEYS: stream, inflight hash, sweep hash. ARGV: group. Removes every job of
// the sweep from the stream and marks it cancelled. Returns the jobs removed.
constexpr char kCancelScript[] = R"lua(
local m = redis.call('HGETALL', KEYS[2])
for i = 1, #m, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], m[i + 1])
  redis.call('XDEL', KEYS[1], m[i + 1])
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[3], 'state', 'cancelled')
return #m / 2
)lua";

// KEYS: stream, inflight hash, sweep hash. ARGV: group, "all" or "". Pauses
// the sweep: its jobs still waiting in the stream (never delivered) are taken
// out of it, so that workers serve other sweeps; they stay in the in-flight
// hash and are enqueued again on resume (as lost jobs, see below). Delivered
// jobs finish, unless ARGV[2] is "all" (start-up with --hold-unfinished: no
// worker of before is alive), which takes them out too. Returns the jobs
// taken out.
constexpr char kPauseScript[] = R"lua(
local m = redis.call('HGETALL', KEYS[2])
local removed = 0
for i = 1, #m, 2 do
  local id = m[i + 1]
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if ARGV[2] == 'all' and not p.err and #p > 0 then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    removed = removed + redis.call('XDEL', KEYS[1], id)
  elseif not p.err and #p == 0 then
    removed = removed + redis.call('XDEL', KEYS[1], id)
  end
end
redis.call('HSET', KEYS[3], 'state', 'paused')
return removed
)lua";

// KEYS: sweep hash, inflight hash, failures hash, failed-items hash, request
// key, name key, sweeps zset, stream. ARGV: sweep id, group. Forgets a sweep
// (sdfarm rm): its jobs leave the stream, its keys are deleted, its name is
// free. Returns 1, or 0 when it was already gone.
constexpr char kRemoveSweepScript[] = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local m = redis.call('HGETALL', KEYS[2])
for i = 1, #m, 2 do
  redis.call('XACK', KEYS[8], ARGV[2], m[i + 1])
  redis.call('XDEL', KEYS[8], m[i + 1])
end
if redis.call('GET', KEYS[6]) == ARGV[1] then redis.call('DEL', KEYS[6]) end
if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[7], ARGV[1])
return 1
)lua";

// KEYS: stream, inflight hash. ARGV: group, worker, stream id, job id, job
// index. Takes a job whose images the coordinator could not store (disk
// full, sweep folder replaced) out of the stream without counting a failure,
// if the delivery is bound to the worker (job_binding.h): its in-flight
// record stays, so the reconciler enqueues it again (a fresh entry,
// deliveries from 1) once storage is retried. Returns the binding's code (1:
// taken out).
const std::string kHoldJobForStorageScript = absl::StrCat(kBindingLua, R"lua(
local code = sdfarm_binding(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if code ~= 1 then return code end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
)lua");

// KEYS: stream, inflight hash. ARGV: group, lease ms. The in-flight jobs of a
// sweep whose stream entry is gone although the job was never acked (the
// stream was trimmed, or the entry deleted by hand: XTRIM and XDEL delete
// pending entries too) and that nobody can still finish: it was never
// delivered, or its delivery has been idle for a whole lease. (A live owner
// renews its delivery; Redis >= 7 then drops the pending entry of a deleted
// message, so the job comes back here on a later pass.) Returns their job
// indexes.
constexpr char kFindLostJobsScript[] = R"lua(
local m = redis.call('HGETALL', KEYS[2])
local lost = {}
for i = 1, #m, 2 do
  local id = m[i + 1]
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    if p.err or #p == 0 or tonumber(p[1][3]) >= tonumber(ARGV[2]) then
      table.insert(lost, m[i])
    end
  end
end
return lost
)lua";

// KEYS: stream, sweep hash, inflight hash. ARGV: group, job index, the lost
// stream id, job id, payload, lease ms. Enqueues a lost job (see above) again
// under a new stream id, if it is still lost; returns the new id, or nil.
constexpr char kRequeueLostJobScript[] = R"lua(
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[3] then return false end
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return false end
if #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) > 0 then return false end
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p.err and #p > 0 then
  if tonumber(p[1][3]) < tonumber(ARGV[6]) then return false end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[4], 'payload', ARGV[5])
redis.call('HSET', KEYS[3], ARGV[2], id)
return id
)lua";

// KEYS: sweep hash. ARGV: done, finished ms, recoveries, last repair. Marks
// the sweep done (with its repairs, see kNoteRepairScript); 0 (and nothing
// written) when its state is gone from Redis (see sweep_adopt.h).
constexpr char kMarkDoneScript[] = R"lua(
if redis.call('HEXISTS', KEYS[1], 'spec') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'done', ARGV[1], 'finished_ms', ARGV[2])
if ARGV[3] ~= '0' then redis.call('HSET', KEYS[1], 'recoveries', ARGV[3], 'last_repair', ARGV[4]) end
return 1
)lua";

// KEYS: sweep hash. ARGV: recoveries, last repair. Records the repairs of
// the sweep's state (see sweep_adopt.h); 0 when its state is gone.
constexpr char kNoteRepairScript[] = R"lua(
if redis.call('HEXISTS', KEYS[1], 'spec') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'recoveries', ARGV[1], 'last_repair', ARGV[2])
return 1
)lua";

// KEYS: sweep hash. Resumes the sweep; 0 when its state is gone from Redis.
constexpr char kResumeScript[] = R"lua(
if redis.call('HEXISTS', KEYS[1], 'spec') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running')
return 1
)lua";

// ------------------------------------------------------------------ state --

enum class State { kRunning, kPaused, kDone, kCancelled };

const char* StateName(State s) {
  switch (s) {
    case State::kRunning: return "running";
    case State::kPaused: return "paused";
    case State::kDone: return "done";
    case State::kCancelled: return "cancelled";
  }
  return "running";
}

State ParseState(const std::string& s) {
  if (s == "paused") return State::kPaused;
  if (s == "done") return State::kDone;
  if (s == "cancelled") return State::kCancelled;
  return State::kRunning;
}

pb::SweepState ToProto(State s) {
  switch (s) {
    case State::kRunning: return pb::RUNNING;
    case State::kPaused: return pb::PAUSED;
    case State::kDone: return pb::DONE;
    case State::kCancelled: return pb::CANCELLED;
  }
  return pb::SWEEP_STATE_UNSPECIFIED;
}

bool Terminal(State s) { return s == State::kDone || s == State::kCancelled; }

struct Sweep {
  // Fixed once loaded.
  std::string id, name, model, request_id;
  std::string owner;  // TokenOwner() of the token that submitted it
  SweepSpec spec;
  std::unique_ptr<SweepExpander> expander;
  int job_size = 1;
  int64_t total = 0, jobs = 0;
  int64_t created_ms = 0;
  int priority = 1;
  std::string output_dir;
  // metadata.jsonl writes seeds as strings when one is >= 2^63: Arrow (and so
  // Hugging Face datasets) reads a JSON integer column as int64.
  bool seeds_as_strings = false;

  // Output writes, and the switch to cancelled (so that nothing is written
  // once a cancel has been acknowledged). Taken before Impl::mu_, never after.
  absl::Mutex out_mu;
  std::unique_ptr<SweepOutput> output ABSL_GUARDED_BY(out_mu);

  // Guarded by Impl::mu_.
  State state = State::kRunning;
  int64_t next_job = 0;
  std::map<int64_t, std::string> inflight;  // job index -> stream id
  int64_t jobs_done = 0;
  int64_t done = 0, failed = 0;
  double pass = 0;  // stride scheduling: advances by 1/priority per job enqueued
  std::map<std::string, Throughput> worker_rates;  // worker id -> its images of this sweep
  std::set<std::string> warnings;                  // lasting notes (prompts cut at 77 tokens)
  // Redis lost or rolled back this sweep's state (sweep_adopt.h): repairs
  // done, and whether the last repair failed (nothing is scheduled then).
  int recoveries = 0;
  bool state_lost = false;
  // Kept in the sweep's hash too (recoveries, last_repair), so that a
  // restarted coordinator still reports them; saved by the reconciler.
  int saved_recoveries = 0;
  std::string last_repair;
  absl::Time last_rollback = absl::InfinitePast();  // MonotonicNow(); one rollback seen by several checks is one repair
  // Why its images cannot be stored now (disk full, folder replaced); "" when
  // they can. Its held jobs are enqueued again from storage_retry_at on.
  std::string storage_problem;
  absl::Time storage_retry_at = absl::InfinitePast();
  uint64_t version = 1;  // bumped on every change a watcher should see
  absl::CondVar changed;  // signalled with version (Impl::changed_ wakes the scheduler)
  uint64_t seq = 0;      // numbering of recent_files / recent_failures
  std::deque<std::pair<uint64_t, std::string>> recent_files, recent_failures, recent_warnings;
};

struct WorkerRecord {
  std::string session;  // the registration's secret (sessions_ maps it back)
  // Deliveries handed to this registration by Claim or listed in its
  // heartbeats: not redelivered to it as "held from before it registered".
  std::set<std::string> handed;
  // Jobs (stream ids) it failed, retryable, and until when it leaves them to
  // other workers: Claim takes no expired job for it while one of them waits.
  std::map<std::string, absl::Time> failed_here;
  pb::WorkerInfo info;
  absl::Time last_heartbeat;  // wall clock, shown to clients
  absl::Time last_seen;       // MonotonicNow() of the same moment: liveness
  std::vector<pb::HeldJob> jobs;
  bool draining = false;
  int64_t images_done = 0;
  Throughput rate;
  std::string current_job;
  pb::StepTelemetry last_step;
};

constexpr size_t kRecentEvents = 4096;
// Distinct warnings a sweep keeps (one per long prompt).
constexpr size_t kMaxWarnings = 20;
// How long a worker that stopped sending heartbeats stays listed (as lost).
constexpr absl::Duration kForgetLostWorker = absl::Minutes(10);
// CLIP reads 75 prompt tokens (77 with its start and end tokens); every
// whitespace-separated word is at least one token.
constexpr int kClipPromptTokens = 75;
// How often the scheduler checks each unfinished sweep against Redis.
constexpr absl::Duration kReconcileInterval = absl::Seconds(2);
// Longest a Claim waits for a job, whatever the worker asks.
// (A waiting Claim sends nothing for up to this long by design: it is a
// unary call bounded by this wait, never under the report streams' idle
// watchdog, whose --report-idle-timeout is at least a second and 300 s by
// default.)
constexpr absl::Duration kMaxClaimWait = absl::Seconds(10);
// How often a waiting Claim looks at Redis again without being woken (leases
// expire without any event).
constexpr absl::Duration kClaimPoll = absl::Seconds(1);
// Largest spec_json a Submit may carry (100,000 prompts of 300 characters).
constexpr size_t kMaxSpecBytes = size_t{32} << 20;

// How long a sweep whose images could not be stored waits before its held
// jobs are handed out again.
constexpr absl::Duration kStorageRetryInterval = absl::Seconds(5);

// Storage errors of the coordinator's own, not the worker's: a full disk
// (RESOURCE_EXHAUSTED) or a sweep folder that is not the one it opened
// (FAILED_PRECONDITION); see sweep_output.h.
bool IsStorageProblem(const absl::Status& s) {
  return s.code() == absl::StatusCode::kResourceExhausted || s.code() == absl::StatusCode::kFailedPrecondition;
}

// The status line of a sweep whose images cannot be stored.
std::string StorageWarning(const Sweep& s) {
  return absl::StrCat("cannot store images: ", s.storage_problem, "; the jobs wait and are retried every ",
                      absl::FormatDuration(kStorageRetryInterval), " (not counted as failures)");
}

// How long start-up waits for Redis to answer.
constexpr absl::Duration kStartupRedisWait = absl::Seconds(60);

// A sweep hash whose name or model disagrees with its own spec was forged
// (or corrupted): it is refused rather than trusted.
absl::Status CheckSweepHashMatchesSpec(const std::string& id, const std::map<std::string, std::string>& hash,
                                       const SweepSpec& spec) {
  for (const auto& [field, want] : {std::pair<std::string, std::string>{"name", spec.name}, {"model", spec.model}}) {
    auto it = hash.find(field);
    if (it != hash.end() && it->second != want) {
      return absl::DataLossError(absl::StrCat("sweep ", id, ": the ", field, " in Redis ('", it->second,
                                              "') is not its spec's ('", want, "'); refusing to load it"));
    }
  }
  return absl::OkStatus();
}

// The identifiers of a report stream's first message, checked before any
// lookup: a job id "<sweep id>/<index>" (ParseJobId) and a stream id
// "<ms>-<seq>". (The worker is the session's: a worker id in a message, which
// is optional, must be that one, checked before this.)
grpc::Status ValidateReportHeader(const pb::JobReport& msg) {
  auto parsed = ParseJobId(msg.job_id());
  if (!parsed.ok() || parsed->second < 0 || msg.job_id().size() > 200) {
    return {grpc::StatusCode::INVALID_ARGUMENT, "malformed job id in the report"};
  }
  const std::string& id = msg.job_stream_id();
  const size_t dash = id.find('-');
  const bool digits = !id.empty() && id.size() <= 41 && dash != std::string::npos && dash > 0 &&
                      dash + 1 < id.size() &&
                      std::all_of(id.begin(), id.end(), [](char c) { return (c >= '0' && c <= '9') || c == '-'; }) &&
                      id.find('-', dash + 1) == std::string::npos;
  if (!digits) return {grpc::StatusCode::INVALID_ARGUMENT, "malformed job stream id in the report"};
  return grpc::Status::OK;
}

// SHA-256 (hex) of a Submit's spec_json, kept with the sweep to tell a retry
// of the same request from a reused request id.
std::string SpecDigest(const std::string& spec_json) {
  engine::Sha256 h;
  h.Update(spec_json);
  return h.HexDigest();
}

// Errors that a later attempt may not get: Redis unreachable, restarting,
// too slow, or the connection broke.
bool IsTransient(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace

// ------------------------------------------------------------------- Impl --

class Coordinator::Impl {
 public:
  explicit Impl(CoordinatorOptions options)
      : opt_(std::move(options)), pool_(opt_.redis), report_watchdog_(opt_.report_idle_timeout) {}

  absl::Status Start();
  void Shutdown();

  grpc::Service* client_service() { return &client_service_; }
  grpc::Service* worker_service() { return &worker_service_; }

  // ---- auth
  enum class Role { kClient, kWorker };
  grpc::Status Authorize(const grpc::ServerContext* ctx, Role role) const {
    if (opt_.no_auth) return grpc::Status::OK;
    const std::string token = BearerToken(*ctx);
    if (token.empty()) return {grpc::StatusCode::UNAUTHENTICATED, "missing bearer token (authorization metadata)"};
    const std::string& want = role == Role::kClient ? opt_.client_token : opt_.worker_token;
    const std::string& other = role == Role::kClient ? opt_.worker_token : opt_.client_token;
    if (ConstantTimeEquals(token, want)) return grpc::Status::OK;
    if (ConstantTimeEquals(token, other)) {
      return {grpc::StatusCode::PERMISSION_DENIED,
              role == Role::kClient ? "a worker token cannot make client calls" : "a client token cannot make worker calls"};
    }
    return {grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token"};
  }

  // ---- client calls
  grpc::Status Submit(const pb::SubmitRequest& req, const std::string& owner, pb::SubmitResponse* resp);
  grpc::Status GetStatus(const std::string& ref, pb::SweepStatus* out);
  grpc::Status List(pb::ListResponse* out);
  grpc::Status Watch(grpc::ServerContext* ctx, const std::string& ref, const std::string& owner,
                     grpc::ServerWriter<pb::WatchEvent>* writer);
  grpc::Status Cancel(const std::string& ref, pb::SweepStatus* out);
  grpc::Status SetPaused(const std::string& ref, bool paused, pb::SweepStatus* out);
  grpc::Status Workers(pb::WorkersResponse* out);
  grpc::Status Remove(const pb::RemoveRequest& req, pb::RemoveResponse* out);
  grpc::Status Adopt(const pb::AdoptRequest& req, pb::AdoptResponse* out);
  // Submit of a spec equal to that of a sweep whose Redis state is gone
  // (cached, or only its folder): adopts it and answers its id. NOT_FOUND
  // when the spec is not such a sweep's (Submit goes on as usual).
  grpc::Status AdoptResubmitted(const SweepSpec& spec, pb::SubmitResponse* resp);
  // A spec that names no size gets the model's own (default_size.h); returns why.
  std::string FillSize(SweepSpec* spec);
  grpc::Status Get(grpc::ServerContext* ctx, const std::string& ref, grpc::ServerWriter<pb::FileChunk>* writer);

  // ---- worker calls
  grpc::Status Register(const pb::RegisterRequest& req, pb::RegisterResponse* resp);
  grpc::Status Claim(grpc::ServerContext* ctx, const pb::ClaimRequest& req, pb::ClaimResponse* resp);
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const pb::HeartbeatRequest& req, pb::HeartbeatResponse* resp);
  grpc::Status ReportJob(grpc::ServerContext* ctx, grpc::ServerReader<pb::JobReport>* reader, pb::ReportAck* ack);

 private:
  std::string Key(const std::string& suffix) const { return opt_.key_prefix + ":" + suffix; }
  std::string SweepKey(const std::string& id) const { return Key("sweep:" + id); }
  std::string StreamKey(const std::string& model) const { return Key("jobs:" + model); }
  std::string DeadKey(const std::string& model) const { return Key("dead:" + model); }
  // A sweep's folder: from the output root and the validated name only.
  std::string SweepDir(const std::string& name) const { return opt_.output_root + "/" + name; }

  absl::Status AcquireLeaderLease();
  absl::Status StartWithRedis();
  // Every state-changing script runs through the leader lease (leader_lease.h).
  absl::StatusOr<RedisReply> Eval(RedisClient* redis, std::vector<std::string> argv) {
    return lease_->Eval(redis, std::move(argv));
  }
  // Claims (XREADGROUP, XAUTOCLAIM) and lease renewals are single commands,
  // not scripts: they run right after this guarded no-op, so a coordinator
  // that lost the lease (stalled past it while another took over) exits
  // before handing out or renewing anything.
  absl::Status CheckLeader(RedisClient* redis) { return Eval(redis, {"EVAL", "return 1", "0"}).status(); }
  absl::Status LoadSweeps();
  // Loads the sweeps LoadSweeps could not for a transient reason.
  void LoadMissingSweeps();

  // ---- Redis losing state (sweep_adopt.h; docs/farm.md "When Redis loses state")
  std::vector<std::string> AdoptArgv(const std::string& id, const std::string& name, const std::string& model,
                                     const std::string& spec_json,
                                     const std::string& state, int job_size, const SweepExpander& expander,
                                     int64_t created_ms, const std::string& request_id);
  // Rebuilds the Redis state of a cached sweep whose state is gone, from its
  // folder; `why` goes into the log and the sweep's warnings. On failure the
  // sweep is marked state_lost (and tried again on the next pass).
  absl::Status AdoptCached(Sweep& s, RedisClient* redis, const std::string& why) ABSL_LOCKS_EXCLUDED(mu_);
  // Adopts the folder `name` of a sweep this coordinator does not hold; the
  // sweep joins the cache. *adopted: false when its Redis state was intact.
  absl::StatusOr<std::shared_ptr<Sweep>> AdoptFolder(const std::string& name, RedisClient* redis,
                                                     const std::string& why, bool* adopted) ABSL_LOCKS_EXCLUDED(mu_);
  // Start-up: adopts every sweep folder whose sweep has no state in Redis.
  void AdoptOrphanFolders(RedisClient* redis);
  // Whether the sweep's hash is in Redis.
  absl::StatusOr<bool> HasState(RedisClient* redis, const std::string& id) {
    ASSIGN_OR_RETURN(RedisReply r, redis->Command({"HEXISTS", SweepKey(id), "spec"}));
    return r.AsInt().value_or(0) == 1;
  }
  absl::StatusOr<std::shared_ptr<Sweep>> LoadSweep(RedisClient* redis, const std::string& id);
  std::shared_ptr<Sweep> Find(const std::string& ref) ABSL_LOCKS_EXCLUDED(mu_);
  void FillStatus(Sweep& s, pb::SweepStatus* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes the sweep's own watchers only (a report of one sweep used to wake
  // every Watch stream), and the scheduler when it has work.
  void Changed(Sweep& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++s.version;
    s.changed.SignalAll();
    if (wake_scheduler_) changed_.SignalAll();
  }
  void MaybeFinish(Sweep& s, RedisClient* redis) ABSL_LOCKS_EXCLUDED(mu_);
  double LiveRate(const std::string& model) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The stride-scheduling pass a sweep joining its model's queue starts at.
  double StartPass(const Sweep& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    double vt = model_vtime_[s.model];
    for (auto& [sid, other] : sweeps_) {
      if (other->model == s.model && other->state == State::kRunning && other->next_job < other->jobs) {
        vt = std::max(vt, other->pass);
      }
    }
    // The current virtual time, minus one step: the sweep is served next
    // without being able to claim a backlog of turns.
    return vt > 0 ? vt - 1.0 / s.priority : 0;
  }
  int LiveWorkers(const std::string& model) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The models at least one live, not draining, worker serves.
  std::set<std::string> LiveModels() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::set<std::string> models;
    for (auto& [id, w] : workers_) {
      if (!w.draining && Live(w)) models.insert(w.info.model());
    }
    return models;
  }
  // On the monotonic clock: a wall-clock step changes no worker's liveness.
  bool Live(const WorkerRecord& w) const { return MonotonicNow() - w.last_seen < opt_.heartbeat_timeout; }
  // The models live workers serve, with their counts and rates, by name.
  std::vector<pb::ServedModel> ServedModels() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Keeps a lasting warning of a sweep (once; at most kMaxWarnings).
  void Warn(Sweep& s, const std::string& text) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The worker a call's session belongs to (and its model), or NOT_FOUND
  // (register again); PERMISSION_DENIED when `claimed_id` (a worker id the
  // message carries) is set and is not the session's.
  grpc::Status CallerWorker(const grpc::ServerContext* ctx, const std::string& claimed_id, std::string* worker,
                            std::string* model) ABSL_LOCKS_EXCLUDED(mu_);
  // One pass of Claim over Redis: a delivery this worker held before it
  // registered, an expired one, or a new one.
  absl::StatusOr<std::optional<QueuedJob>> TryClaim(const std::string& worker, const std::string& model)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Wakes the Claims waiting for jobs of `model`.
  void JobsArrived(const std::string& model) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++model_enqueued_[model];
    changed_.SignalAll();
  }
  DeliveryRef Delivery(const Sweep& s, const std::string& worker, const std::string& stream_id,
                       const std::string& job_id, int64_t job_index) const {
    return {StreamKey(s.model), SweepKey(s.id) + ":inflight", worker, stream_id, job_id, job_index};
  }

  void SchedulerLoop();
  absl::Status FillModel(const std::string& model);
  // Brings the cached state of an unfinished sweep back in line with Redis,
  // where a Redis reply lost on a broken connection, or a stream trimmed by
  // hand, can leave it behind: enqueues again in-flight jobs whose stream
  // entry was deleted, reloads the in-flight map and the jobs done, and
  // completes the sweep when every job is.
  absl::Status Reconcile(Sweep& s);
  // Reports that Redis's state of `s` went back (`what`: the counters).
  void NoteRollback(Sweep& s, const std::string& what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  JobPayload PayloadFor(const Sweep& s, int64_t job_index) const;

  // A request id reused with another spec_json is refused (ALREADY_EXISTS):
  // answering with the new spec's counts made the client believe it had
  // submitted what it had not.
  grpc::Status CheckSameRequest(RedisClient* redis, const std::string& sweep_id, const std::string& request_id,
                                const std::string& spec_json);
  // Per-token quotas (request_limits.h): RESOURCE_EXHAUSTED naming the limit.
  grpc::Status CheckSubmitQuota(const std::string& owner, const std::string& model) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  grpc::Status CheckWatcherQuota(const std::string& owner) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The checks a reported image passes before any decoding: the delivery is
  // bound to the reporter (job_binding.h; PERMISSION_DENIED for another
  // job's, *lost when no longer held), then the PNG header
  // (png_header_check.h).
  absl::Status CheckImageBeforeDecoding(Sweep& s, const std::string& worker, const std::string& stream_id,
                                        const std::string& job_id, int64_t job_index, const Item& item,
                                        const pb::FinishedImage& image, RedisClient* redis, bool* lost);
  // An image `why` could not be stored (IsStorageProblem): the sweep's status
  // says so, and the job leaves the stream without counting a failure; it is
  // handed out again after kStorageRetryInterval, and again, until the
  // images can be written.
  void HoldJobForStorage(Sweep& s, const std::string& worker, const std::string& stream_id, const std::string& job_id,
                         int64_t job_index, const absl::Status& why, RedisClient* redis);
  // Handles one reported image; sets *lost / *cancelled when it was discarded.
  absl::Status HandleImage(Sweep& s, const std::string& worker, int64_t job_index, const std::string& stream_id,
                           const std::string& job_id, const pb::FinishedImage& image, absl::Time job_started, RedisClient* redis, bool* lost,
                           bool* cancelled);

  CoordinatorOptions opt_;
  RedisPool pool_;
  std::unique_ptr<OutputRootLock> root_lock_;  // one coordinator per output root
  std::unique_ptr<LeaderLease> lease_;         // one coordinator per farm (Redis + key prefix)
  IdleStreamWatchdog report_watchdog_;

  absl::Mutex mu_;
  absl::CondVar changed_;
  std::map<std::string, std::shared_ptr<Sweep>> sweeps_ ABSL_GUARDED_BY(mu_);  // by id
  std::map<std::string, std::string> names_ ABSL_GUARDED_BY(mu_);               // name -> id
  std::map<std::string, WorkerRecord> workers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> sessions_ ABSL_GUARDED_BY(mu_);        // session -> worker id
  std::map<std::string, uint64_t> model_enqueued_ ABSL_GUARDED_BY(mu_);    // jobs made claimable, per model
  std::map<std::string, double> model_vtime_ ABSL_GUARDED_BY(mu_);  // virtual time of each model's queue
  std::set<std::string> unloaded_ ABSL_GUARDED_BY(mu_);              // sweep ids to load again
  std::vector<std::string> farm_warnings_ ABSL_GUARDED_BY(mu_);      // e.g. Redis may lose writes
  int watchers_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> watchers_by_owner_ ABSL_GUARDED_BY(mu_);  // TokenOwner -> open Watch streams
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_scheduler_ ABSL_GUARDED_BY(mu_) = false;
  bool reconcile_soon_ ABSL_GUARDED_BY(mu_) = false;  // a sweep's Redis state looked lost
  std::thread scheduler_;
  std::atomic<int64_t> discarded_reports_{0};

  class ClientServiceImpl final : public pb::ClientService::Service {
   public:
    explicit ClientServiceImpl(Impl* impl) : impl_(impl) {}
#define SDFARM_AUTH_CLIENT()                                          \
  if (grpc::Status a = impl_->Authorize(ctx, Role::kClient); !a.ok()) { \
    return a;                                                         \
  }
    grpc::Status Submit(grpc::ServerContext* ctx, const pb::SubmitRequest* req, pb::SubmitResponse* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->Submit(*req, TokenOwner(BearerToken(*ctx)), resp);
    }
    grpc::Status Status(grpc::ServerContext* ctx, const pb::SweepRef* req, pb::SweepStatus* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->GetStatus(req->sweep(), resp);
    }
    grpc::Status List(grpc::ServerContext* ctx, const pb::ListRequest*, pb::ListResponse* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->List(resp);
    }
    grpc::Status Watch(grpc::ServerContext* ctx, const pb::SweepRef* req,
                       grpc::ServerWriter<pb::WatchEvent>* writer) override {
      SDFARM_AUTH_CLIENT();
      return impl_->Watch(ctx, req->sweep(), TokenOwner(BearerToken(*ctx)), writer);
    }
    grpc::Status Cancel(grpc::ServerContext* ctx, const pb::SweepRef* req, pb::SweepStatus* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->Cancel(req->sweep(), resp);
    }
    grpc::Status Pause(grpc::ServerContext* ctx, const pb::SweepRef* req, pb::SweepStatus* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->SetPaused(req->sweep(), true, resp);
    }
    grpc::Status Resume(grpc::ServerContext* ctx, const pb::SweepRef* req, pb::SweepStatus* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->SetPaused(req->sweep(), false, resp);
    }
    grpc::Status Workers(grpc::ServerContext* ctx, const pb::WorkersRequest*, pb::WorkersResponse* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->Workers(resp);
    }
    grpc::Status Get(grpc::ServerContext* ctx, const pb::SweepRef* req, grpc::ServerWriter<pb::FileChunk>* writer) override {
      SDFARM_AUTH_CLIENT();
      return impl_->Get(ctx, req->sweep(), writer);
    }
    grpc::Status Remove(grpc::ServerContext* ctx, const pb::RemoveRequest* req, pb::RemoveResponse* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->Remove(*req, resp);
    }
    grpc::Status Adopt(grpc::ServerContext* ctx, const pb::AdoptRequest* req, pb::AdoptResponse* resp) override {
      SDFARM_AUTH_CLIENT();
      return impl_->Adopt(*req, resp);
    }
#undef SDFARM_AUTH_CLIENT

   private:
    Impl* impl_;
  };

  class WorkerServiceImpl final : public pb::WorkerService::Service {
   public:
    explicit WorkerServiceImpl(Impl* impl) : impl_(impl) {}
#define SDFARM_AUTH_WORKER()                                          \
  if (grpc::Status a = impl_->Authorize(ctx, Role::kWorker); !a.ok()) { \
    return a;                                                         \
  }
    grpc::Status Register(grpc::ServerContext* ctx, const pb::RegisterRequest* req, pb::RegisterResponse* resp) override {
      SDFARM_AUTH_WORKER();
      if (grpc::Status c = CheckRegisterRequest(*req); !c.ok()) return c;
      return impl_->Register(*req, resp);
    }
    grpc::Status Claim(grpc::ServerContext* ctx, const pb::ClaimRequest* req, pb::ClaimResponse* resp) override {
      SDFARM_AUTH_WORKER();
      return impl_->Claim(ctx, *req, resp);
    }
    grpc::Status Heartbeat(grpc::ServerContext* ctx, const pb::HeartbeatRequest* req,
                           pb::HeartbeatResponse* resp) override {
      SDFARM_AUTH_WORKER();
      if (grpc::Status c = CheckHeartbeatRequest(*req); !c.ok()) return c;
      return impl_->Heartbeat(ctx, *req, resp);
    }
    grpc::Status ReportJob(grpc::ServerContext* ctx, grpc::ServerReader<pb::JobReport>* reader,
                           pb::ReportAck* ack) override {
      SDFARM_AUTH_WORKER();
      return impl_->ReportJob(ctx, reader, ack);
    }
#undef SDFARM_AUTH_WORKER

   private:
    Impl* impl_;
  };

  ClientServiceImpl client_service_{this};
  WorkerServiceImpl worker_service_{this};
};

// --------------------------------------------------------------- start-up --

absl::Status Coordinator::Impl::Start() {
  std::error_code ec;
  std::filesystem::create_directories(opt_.output_root, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create output root ", opt_.output_root, ": ", ec.message()));
  ASSIGN_OR_RETURN(root_lock_, OutputRootLock::Acquire(opt_.output_root));
  // Redis may be restarting as the coordinator starts (both restarted at
  // once, a broken connection): transient errors are retried for a while.
  const absl::Time deadline = absl::Now() + kStartupRedisWait;
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    absl::Status s = AcquireLeaderLease();
    if (s.ok()) s = StartWithRedis();
    if (s.ok()) break;
    if (!IsTransient(s) || absl::Now() + backoff > deadline) return s;
    Log(absl::StrCat("Redis at start-up: ", s.ToString(), "; retrying in ", absl::FormatDuration(backoff)));
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  return absl::OkStatus();
}

absl::Status Coordinator::Impl::AcquireLeaderLease() {
  if (lease_) return absl::OkStatus();
  LeaderLeaseOptions o;
  o.redis = opt_.redis;
  o.key = Key("leader");
  o.ttl = opt_.leader_lease;
  o.log = [](const std::string& line) { Log(line); };
  o.on_lost = opt_.on_lost_leadership ? opt_.on_lost_leadership : [](const std::string& why) {
    // Another coordinator writes the farm's state now: stop before writing
    // anything more (images, manifests). Writes are atomic, so this is as
    // safe as a crash.
    Log(absl::StrCat("FATAL: lost the leadership: ", why, "; exiting"));
    std::_Exit(kExitLostLeadership);
  };
  ASSIGN_OR_RETURN(lease_, LeaderLease::Acquire(std::move(o)));
  return absl::OkStatus();
}

absl::Status Coordinator::Impl::StartWithRedis() {
  ASSIGN_OR_RETURN(auto redis, pool_.Acquire());
  if (absl::Status s = redis->CheckNoEviction(); !s.ok()) {
    if (IsTransient(s)) return s;
    Log(absl::StrCat("WARNING: ", s.message(),
                     " -- Redis may silently delete queued jobs and sweep state under memory pressure; "
                     "set `maxmemory-policy noeviction`"));
  }
  ASSIGN_OR_RETURN(RedisReply aof, redis->Command({"CONFIG", "GET", "appendonly"}));
  if (aof.array().size() == 2 && aof.array()[1].str() != "yes") {
    Log("WARNING: Redis runs without AOF (appendonly no): a Redis restart loses queued jobs and sweep state");
    absl::MutexLock lock(&mu_);
    farm_warnings_.push_back("Redis runs without AOF (appendonly no): a Redis restart loses the farm's state "
                             "(sweeps are rebuilt from their folders)");
  } else {
    ASSIGN_OR_RETURN(RedisReply fsync, redis->Command({"CONFIG", "GET", "appendfsync"}));
    if (fsync.array().size() == 2 && fsync.array()[1].str() != "always") {
      const std::string text = absl::StrCat(
          "Redis runs with appendfsync ", fsync.array()[1].str(),
          ", not always: a Redis crash loses up to a second of acknowledged writes (finished jobs, submitted "
          "sweeps). The coordinator detects and repairs such a rollback from the sweep folders, re-rendering what "
          "Redis forgot; set `appendfsync always` to lose nothing");
      Log("WARNING: " + text);
      absl::MutexLock lock(&mu_);
      farm_warnings_.push_back(text);
    }
  }
  RETURN_IF_ERROR(LoadSweeps());
  AdoptOrphanFolders(redis.get());
  return absl::OkStatus();
}

void Coordinator::Impl::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    changed_.SignalAll();
    for (auto& [id, s] : sweeps_) s->changed.SignalAll();
  }
  if (scheduler_.joinable()) scheduler_.join();
}

absl::StatusOr<std::shared_ptr<Sweep>> Coordinator::Impl::LoadSweep(RedisClient* redis, const std::string& id) {
  ASSIGN_OR_RETURN(RedisReply r, redis->Command({"HGETALL", SweepKey(id)}));
  std::map<std::string, std::string> f;
  for (size_t i = 0; i + 1 < r.array().size(); i += 2) f[r.array()[i].str()] = r.array()[i + 1].str();
  if (f.empty()) return absl::NotFoundError("sweep " + id + " has no state in Redis");
  auto s = std::make_shared<Sweep>();
  s->id = id;
  s->request_id = f["request_id"];
  s->owner = f["owner"];
  nlohmann::json spec_json = nlohmann::json::parse(f["spec"], nullptr, false);
  SweepLimits limits = opt_.limits;
  limits.max_images = INT64_MAX;  // accepted once; a later, smaller limit must not strand it
  ASSIGN_OR_RETURN(s->spec, SweepSpec::FromJson(spec_json, limits, 0));
  // Names (and so keys and paths) come from the validated spec, never from
  // other fields of the hash, which anyone with Redis access may have forged.
  RETURN_IF_ERROR(CheckSweepHashMatchesSpec(id, f, s->spec));
  s->name = s->spec.name;
  s->model = s->spec.model;
  auto num = [&](const char* k) -> int64_t {
    int64_t v = 0;
    (void)absl::SimpleAtoi(f[k], &v);
    return v;
  };
  s->job_size = static_cast<int>(std::max<int64_t>(1, num("job_size")));
  s->expander = std::make_unique<SweepExpander>(s->spec, s->job_size);
  s->total = s->expander->num_items();
  s->jobs = s->expander->num_jobs();
  s->created_ms = num("created_ms");
  s->priority = s->spec.priority;
  s->output_dir = SweepDir(s->name);
  for (uint64_t seed : s->spec.seeds) {
    const uint64_t last = seed + static_cast<uint64_t>(std::max(0, s->spec.images_per_combination - 1));
    if (seed > static_cast<uint64_t>(INT64_MAX) || last > static_cast<uint64_t>(INT64_MAX) || last < seed) {
      s->seeds_as_strings = true;
    }
  }
  s->state = ParseState(f["state"]);
  s->recoveries = s->saved_recoveries = static_cast<int>(num("recoveries"));
  s->last_repair = f["last_repair"];
  if (!s->last_repair.empty()) {
    s->warnings.insert(s->last_repair);
    s->recent_warnings.emplace_back(++s->seq, s->last_repair);
  }
  s->next_job = num("next_job");
  s->jobs_done = num("jobs_done");
  s->done = num("done");
  ASSIGN_OR_RETURN(RedisReply nf, redis->Command({"HLEN", SweepKey(id) + ":failed"}));
  ASSIGN_OR_RETURN(s->failed, nf.AsInt());
  if (!Terminal(s->state)) {
    ASSIGN_OR_RETURN(RedisReply inflight, redis->Command({"HGETALL", SweepKey(id) + ":inflight"}));
    for (size_t i = 0; i + 1 < inflight.array().size(); i += 2) {
      int64_t j = 0;
      if (absl::SimpleAtoi(inflight.array()[i].str(), &j)) s->inflight[j] = inflight.array()[i + 1].str();
    }
    absl::MutexLock lock(&s->out_mu);
    ASSIGN_OR_RETURN(s->output, SweepOutput::Open(opt_.output_root, s->name));
    s->done = static_cast<int64_t>(s->output->recorded());
    (void)s->output->WriteSpec(spec_json);
    // Images of jobs Redis has not handed out yet: Redis went back to an
    // older state (not after an adoption, which starts again at job 0).
    if (f["adopted_ms"].empty() && s->next_job < s->jobs &&
        LastRecordedItem(*s->output) >= s->expander->JobAt(s->next_job).first_item) {
      const std::string text = absl::StrCat(
          "Redis's state of this sweep is older than its folder (next job ", s->next_job,
          ", but images of later jobs are recorded): Redis lost acknowledged writes (a rollback). Jobs Redis forgot "
          "are handed out again; images on disk are kept and recorded once");
      Log(absl::StrCat("ERROR: sweep ", s->name, " (", id, "): ", text));
      ++s->recoveries;
      s->last_repair = absl::StrCat("repair ", s->recoveries, ": ", text);
      s->warnings.insert(s->last_repair);
      s->recent_warnings.emplace_back(++s->seq, s->last_repair);
    }
  }
  return s;
}

absl::Status Coordinator::Impl::LoadSweeps() {
  ASSIGN_OR_RETURN(auto redis, pool_.Acquire());
  ASSIGN_OR_RETURN(RedisReply ids, redis->Command({"ZRANGE", Key("sweeps"), "0", "-1"}));
  int resumed = 0;
  for (const RedisReply& id : ids.array()) {
    auto s = LoadSweep(redis.get(), id.str());
    if (!s.ok()) {
      // Tried again every few seconds (LoadMissingSweeps): a Redis reply
      // lost now must not leave the sweep unserved until the next restart.
      Log(absl::StrCat("cannot load sweep ", id.str(), ": ", s.status().ToString(), IsTransient(s.status()) ? " (retrying)" : ""));
      absl::MutexLock lock(&mu_);
      if (IsTransient(s.status())) unloaded_.insert(id.str());
      continue;
    }
    absl::MutexLock lock(&mu_);
    if (!Terminal((*s)->state)) ++resumed;
    names_[(*s)->name] = (*s)->id;
    sweeps_[(*s)->id] = *s;
  }
  if (opt_.hold_unfinished) {
    // Nothing of before runs on: every unfinished sweep is paused and its
    // jobs leave the queues, until a client resumes it.
    std::vector<std::shared_ptr<Sweep>> unfinished;
    {
      absl::MutexLock lock(&mu_);
      for (auto& [id, sw] : sweeps_) {
        if (!Terminal(sw->state)) unfinished.push_back(sw);
      }
    }
    for (auto& sw : unfinished) {
      ASSIGN_OR_RETURN(RedisReply r, Eval(redis.get(), {"EVAL", kPauseScript, "3", StreamKey(sw->model),
                                                     SweepKey(sw->id) + ":inflight", SweepKey(sw->id),
                                                     JobQueue::kGroup, "all"}));
      (void)r;
      absl::MutexLock lock(&mu_);
      sw->state = State::kPaused;
    }
    Log(absl::StrCat("loaded ", ids.array().size(), " sweeps from Redis; ", unfinished.size(),
                     " unfinished held (paused) until resumed (--hold-unfinished)"));
  } else {
    Log(absl::StrCat("loaded ", ids.array().size(), " sweeps from Redis; ", resumed, " unfinished resume"));
  }
  std::vector<std::shared_ptr<Sweep>> all;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, s] : sweeps_) all.push_back(s);
  }
  for (auto& s : all) MaybeFinish(*s, redis.get());
  return absl::OkStatus();
}

std::shared_ptr<Sweep> Coordinator::Impl::Find(const std::string& ref) {
  absl::MutexLock lock(&mu_);
  auto it = sweeps_.find(ref);
  if (it != sweeps_.end()) return it->second;
  auto n = names_.find(ref);
  if (n == names_.end()) return nullptr;
  it = sweeps_.find(n->second);
  return it == sweeps_.end() ? nullptr : it->second;
}

// ----------------------------------------------------------------- status --

int Coordinator::Impl::LiveWorkers(const std::string& model) {
  int n = 0;
  for (auto& [id, w] : workers_) {
    if (w.info.model() == model && !w.draining && Live(w)) ++n;
  }
  return n;
}

double Coordinator::Impl::LiveRate(const std::string& model) {
  const absl::Time now = absl::Now();
  double r = 0;
  for (auto& [id, w] : workers_) {
    if (w.info.model() == model && Live(w)) r += w.rate.PerSecond(now);
  }
  return r;
}

std::vector<pb::ServedModel> Coordinator::Impl::ServedModels() {
  const absl::Time now = absl::Now();
  std::map<std::string, pb::ServedModel> served;
  for (auto& [id, w] : workers_) {
    if (w.draining || !Live(w)) continue;
    pb::ServedModel& m = served[w.info.model()];
    m.set_model(w.info.model());
    m.set_workers(m.workers() + 1);
    m.set_images_per_second(m.images_per_second() + w.rate.PerSecond(now));
  }
  std::vector<pb::ServedModel> out;
  for (auto& [name, m] : served) out.push_back(m);
  return out;
}

void Coordinator::Impl::Warn(Sweep& s, const std::string& text) {
  if (s.warnings.size() >= kMaxWarnings || !s.warnings.insert(text).second) return;
  s.recent_warnings.emplace_back(++s.seq, text);
  Log(absl::StrCat("sweep ", s.name, ": warning: ", text));
  Changed(s);
}

void Coordinator::Impl::FillStatus(Sweep& s, pb::SweepStatus* out) {
  const absl::Time now = absl::Now();
  out->set_sweep_id(s.id);
  out->set_name(s.name);
  out->set_state(ToProto(s.state));
  out->set_total(s.total);
  out->set_done(s.done);
  out->set_failed(s.failed);
  out->set_model(s.model);
  out->set_priority(s.priority);
  out->set_created_unix_ms(s.created_ms);
  out->set_jobs(s.jobs);
  out->set_jobs_done(s.jobs_done);
  out->set_output_dir(s.output_dir);
  for (const std::string& w : s.warnings) out->add_warnings(w);
  out->set_state_lost(s.state_lost);
  out->set_recoveries(s.recoveries);
  if (Terminal(s.state)) return;
  if (!s.storage_problem.empty()) out->add_warnings(StorageWarning(s));
  out->set_live_workers(LiveWorkers(s.model));
  // The sweep's rate is the sum of its live workers' rates: a lost worker
  // stops counting at once, so the ETA follows the workers that are left.
  double rate = 0;
  for (auto& [wid, wr] : s.worker_rates) {
    auto it = workers_.find(wid);
    if (it == workers_.end() || !Live(it->second)) continue;
    const double r = wr.PerSecond(now);
    if (r <= 0) continue;
    rate += r;
    pb::WorkerRate* w = out->add_workers();
    w->set_worker_id(wid);
    w->set_host(it->second.info.host());
    w->set_images_per_second(r);
  }
  // Jobs being rendered, from the workers' step telemetry.
  double rendering = 0;
  for (auto& [wid, w] : workers_) {
    if (w.current_job.empty() || !Live(w)) continue;
    auto parsed = ParseJobId(w.current_job);
    if (!parsed.ok() || parsed->first != s.id || parsed->second < 0 || parsed->second >= s.jobs) continue;
    const int64_t images = s.expander->JobAt(parsed->second).count;
    pb::ActiveJob* a = out->add_active();
    a->set_worker_id(wid);
    a->set_job_id(w.current_job);
    a->set_images(static_cast<int32_t>(images));
    a->set_step(w.last_step.step());
    a->set_total_steps(w.last_step.total_steps());
    if (w.last_step.total_steps() > 0) {
      rendering += static_cast<double>(images) * std::min(1.0, static_cast<double>(w.last_step.step()) /
                                                                    w.last_step.total_steps());
    }
  }
  out->set_rendering_images(rendering);
  if (s.state == State::kPaused) return;  // no rate or ETA: nothing is handed out
  out->set_images_per_second(rate);
  const int64_t left = s.total - s.done - s.failed;
  out->set_eta_seconds(rate > 0 ? std::max(0.0, static_cast<double>(left) - rendering) / rate : 0);
}

void Coordinator::Impl::MaybeFinish(Sweep& s, RedisClient* redis) {
  int recoveries = 0;
  std::string last_repair;
  {
    absl::MutexLock lock(&mu_);
    if (s.state != State::kRunning && s.state != State::kPaused) return;
    if (s.jobs_done < s.jobs) return;
    recoveries = s.recoveries;
    last_repair = s.last_repair;
  }
  // Every job is acknowledged or dead-lettered: the sweep is complete.
  auto r = Eval(redis, {"EVAL", kMarkDoneScript, "1", SweepKey(s.id), absl::StrCat(s.done), absl::StrCat(NowMs()),
                        absl::StrCat(recoveries), last_repair});
  if (!r.ok()) {
    Log(absl::StrCat("sweep ", s.name, ": cannot record completion: ", r.status().ToString()));
    return;
  }
  if (r->AsInt().value_or(0) == 0) return;  // its state is gone from Redis: the reconciler rebuilds it first
  absl::MutexLock lock(&mu_);
  s.state = State::kDone;
  Changed(s);
  Log(absl::StrCat("sweep ", s.name, " (", s.id, ") done: ", s.done, " images, ", s.failed, " failed"));
}

// ------------------------------------------------------------ client calls --

grpc::Status Coordinator::Impl::CheckSubmitQuota(const std::string& owner, const std::string& model) {
  const TokenLimits& l = opt_.token_limits;
  int unfinished = 0, waiting = LiveWorkers(model) == 0 ? 1 : 0;
  std::map<std::string, bool> served;  // model -> has a live worker
  for (auto& [id, s] : sweeps_) {
    if (s->owner != owner || Terminal(s->state)) continue;
    ++unfinished;
    auto it = served.find(s->model);
    if (it == served.end()) it = served.emplace(s->model, LiveWorkers(s->model) > 0).first;
    if (!it->second) ++waiting;
  }
  if (l.max_unfinished_sweeps > 0 && unfinished >= l.max_unfinished_sweeps) {
    return {grpc::StatusCode::RESOURCE_EXHAUSTED,
            absl::StrCat("this token has ", unfinished, " unfinished sweeps; the limit is ", l.max_unfinished_sweeps,
                         " per token (--max-unfinished-sweeps-per-token): wait for some to finish, or cancel or "
                         "remove some")};
  }
  if (l.max_waiting_sweeps > 0 && waiting > l.max_waiting_sweeps) {
    return {grpc::StatusCode::RESOURCE_EXHAUSTED,
            absl::StrCat("this token has ", waiting - 1, " sweeps waiting for models no live worker serves; the limit "
                         "is ", l.max_waiting_sweeps, " per token (--max-waiting-sweeps-per-token)")};
  }
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::CheckSameRequest(RedisClient* redis, const std::string& sweep_id,
                                                const std::string& request_id, const std::string& spec_json) {
  auto r = redis->Command({"HGET", SweepKey(sweep_id), "request_spec_sha256"});
  if (!r.ok()) return ToGrpc(r.status());
  // (Sweeps created before this check have no digest: taken as the same.)
  if (r->is_string() && r->str() != SpecDigest(spec_json)) {
    return {grpc::StatusCode::ALREADY_EXISTS,
            absl::StrCat("request id '", request_id, "' already submitted sweep ", sweep_id,
                         " with another spec; use a new request id for a new sweep")};
  }
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::CheckWatcherQuota(const std::string& owner) {
  const int limit = opt_.token_limits.max_watchers;
  auto it = watchers_by_owner_.find(owner);
  if (limit > 0 && it != watchers_by_owner_.end() && it->second >= limit) {
    return {grpc::StatusCode::RESOURCE_EXHAUSTED,
            absl::StrCat("too many watchers for this token (", limit, " per token, --max-watchers-per-token); try "
                         "again later")};
  }
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::Submit(const pb::SubmitRequest& req, const std::string& owner,
                                       pb::SubmitResponse* resp) {
  // Checked before parsing: a JSON document costs many times its size in memory.
  if (req.spec_json().size() > kMaxSpecBytes) {
    return {grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("the sweep spec is ", req.spec_json().size() >> 20, " MiB; the limit is ", kMaxSpecBytes >> 20,
                         " MiB (split it into several sweeps)")};
  }
  nlohmann::json json = nlohmann::json::parse(req.spec_json(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return {grpc::StatusCode::INVALID_ARGUMENT, "spec_json is not a JSON object"};
  }
  auto spec = SweepSpec::FromJson(json, opt_.limits, std::random_device{}());
  if (!spec.ok()) return ToGrpc(spec.status());
  if (spec->size_from_model) {
    resp->set_size_note(FillSize(&*spec));
    if (absl::Status valid = Validate(*spec, opt_.limits); !valid.ok()) return ToGrpc(valid);
  }
  if (req.request_id().size() > 200) return {grpc::StatusCode::INVALID_ARGUMENT, "request_id is over 200 bytes"};
  SweepExpander expander(*spec, opt_.job_size);
  resp->set_images(expander.num_items());
  resp->set_jobs(expander.num_jobs());
  for (size_t i = 0; i < spec->prompts.size(); ++i) {
    const int words = CountWords(spec->prompts[i]);
    if (words > kClipPromptTokens && !spec->prompt_chunking) {
      resp->add_warnings(absl::StrCat("prompt ", i + 1, " (\"", PromptHead(spec->prompts[i]), "\") has ", words,
                                      " words, at least as many tokens: CLIP reads ", kClipPromptTokens,
                                      " and the rest is cut; set prompt_chunking: true (--prompt-chunking) to keep "
                                      "it"));
    }
  }
  std::string served_list;
  {
    absl::MutexLock lock(&mu_);
    const double rate = LiveRate(spec->model);
    resp->set_eta_seconds(rate > 0 ? static_cast<double>(expander.num_items()) / rate : 0);
    resp->set_live_workers(LiveWorkers(spec->model));
    for (const pb::ServedModel& m : ServedModels()) {
      *resp->add_served_models() = m;
      absl::StrAppend(&served_list, served_list.empty() ? "" : ", ", m.model(), " (", m.workers(), " worker",
                      m.workers() == 1 ? "" : "s", ")");
    }
  }
  if (req.dry_run()) return grpc::Status::OK;
  if (resp->live_workers() == 0 && !req.wait_for_workers() && !Find(spec->name)) {
    return {grpc::StatusCode::FAILED_PRECONDITION,
            absl::StrCat("no live worker serves model '", spec->model, "'; ",
                         served_list.empty() ? "no worker is live" : "the live workers serve " + served_list,
                         ". Start a worker for it, or submit with --wait-for-workers to queue the sweep until one "
                         "registers")};
  }

  // The same spec as a sweep whose Redis state was lost: adopt it (its
  // images are kept) rather than refuse the name or start a second sweep.
  const std::string dir = SweepDir(spec->name);
  if (grpc::Status adopted = AdoptResubmitted(*spec, resp); adopted.error_code() != grpc::StatusCode::NOT_FOUND) {
    return adopted;
  }
  // The folder must not hold another sweep's images.
  {
    absl::MutexLock lock(&mu_);
    // (A retry of a submit that made its sweep is not a new sweep.)
    if (!names_.count(spec->name)) {
      if (grpc::Status q = CheckSubmitQuota(owner, spec->model); !q.ok()) return q;
    }
    if (!names_.count(spec->name) && std::filesystem::exists(dir + "/metadata.jsonl")) {
      return {grpc::StatusCode::ALREADY_EXISTS,
              "the output folder " + dir + " already holds images of another sweep; choose another name"};
    }
  }
  auto redis = pool_.Acquire();
  if (!redis.ok()) return ToGrpc(redis.status());
  const std::string id = RandomHex(8);
  const std::string request_id = req.request_id().empty() ? RandomHex(16) : req.request_id();
  const nlohmann::json canonical = spec->ToJson();
  const int64_t created = NowMs();
  std::vector<std::string> argv = {"EVAL", kCreateSweepScript, "4", Key("request:" + request_id),
                                   Key("name:" + spec->name), SweepKey(id), Key("sweeps"),
                                   id, spec->name, absl::StrCat(created)};
  for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
           {"name", spec->name},
           {"model", spec->model},
           {"spec", canonical.dump()},
           {"state", "running"},
           {"job_size", absl::StrCat(opt_.job_size)},
           {"total", absl::StrCat(expander.num_items())},
           {"jobs", absl::StrCat(expander.num_jobs())},
           {"next_job", "0"},
           {"jobs_done", "0"},
           {"created_ms", absl::StrCat(created)},
           {"request_id", request_id},
           {"owner", owner},
           {"request_spec_sha256", SpecDigest(req.spec_json())},
           {"output_dir", dir}}) {
    argv.push_back(k);
    argv.push_back(v);
  }
  auto r = Eval(redis->get(), argv);
  if (!r.ok()) return ToGrpc(r.status());
  const auto& a = r->array();
  if (a.size() != 2) return {grpc::StatusCode::INTERNAL, "unexpected reply creating the sweep"};
  const int64_t code = a[0].AsInt().value_or(-1);
  const std::string existing = a[1].str();
  if (code == 2) {
    return {grpc::StatusCode::ALREADY_EXISTS,
            "sweep name '" + spec->name + "' is already used by sweep " + existing + "; choose another name"};
  }
  if (code == 1) {  // a retry of a submit that already happened
    if (grpc::Status same = CheckSameRequest(redis->get(), existing, request_id, req.spec_json()); !same.ok()) {
      return same;
    }
    // The first attempt may have failed after creating the sweep in Redis
    // (its reply lost with a broken connection) and before this process
    // loaded it: load it now, or it would exist but never run.
    if (!Find(existing)) {
      auto loaded = LoadSweep(redis->get(), existing);
      if (!loaded.ok()) return ToGrpc(loaded.status());
      absl::MutexLock lock(&mu_);
      if (!sweeps_.count(existing)) {
        (*loaded)->pass = StartPass(**loaded);
        sweeps_[existing] = *loaded;
        names_[(*loaded)->name] = existing;
        wake_scheduler_ = true;
        changed_.SignalAll();
        Log(absl::StrCat("sweep ", (*loaded)->name, " (", existing, ") submitted again with request id ",
                         request_id, ": loaded it"));
      }
    }
    resp->set_sweep_id(existing);
    return grpc::Status::OK;
  }
  auto sweep = LoadSweep(redis->get(), id);
  if (!sweep.ok()) return ToGrpc(sweep.status());
  {
    absl::MutexLock lock(&mu_);
    (*sweep)->pass = StartPass(**sweep);
    sweeps_[id] = *sweep;
    names_[spec->name] = id;
    wake_scheduler_ = true;
    changed_.SignalAll();
  }
  resp->set_sweep_id(id);
  Log(absl::StrCat("sweep ", spec->name, " (", id, ") submitted: ", expander.num_items(), " images in ",
                   expander.num_jobs(), " jobs for model ", spec->model, ", priority ", spec->priority));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::GetStatus(const std::string& ref, pb::SweepStatus* out) {
  std::shared_ptr<Sweep> s = Find(ref);
  if (!s) return {grpc::StatusCode::NOT_FOUND, "no sweep with id or name '" + ref + "'"};
  absl::MutexLock lock(&mu_);
  FillStatus(*s, out);
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::List(pb::ListResponse* out) {
  absl::MutexLock lock(&mu_);
  std::vector<Sweep*> all;
  for (auto& [id, s] : sweeps_) all.push_back(s.get());
  std::sort(all.begin(), all.end(), [](Sweep* a, Sweep* b) { return a->created_ms < b->created_ms; });
  for (Sweep* s : all) FillStatus(*s, out->add_sweeps());
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::Watch(grpc::ServerContext* ctx, const std::string& ref, const std::string& owner,
                                      grpc::ServerWriter<pb::WatchEvent>* writer) {
  std::shared_ptr<Sweep> s = Find(ref);
  if (!s) return {grpc::StatusCode::NOT_FOUND, "no sweep with id or name '" + ref + "'"};
  uint64_t seen_version = 0, seen_seq = 0;
  {
    absl::MutexLock lock(&mu_);
    if (watchers_ >= opt_.max_watchers) {
      return {grpc::StatusCode::RESOURCE_EXHAUSTED,
              absl::StrCat("too many watchers (", opt_.max_watchers, "); try again later")};
    }
    if (grpc::Status q = CheckWatcherQuota(owner); !q.ok()) return q;
    ++watchers_;
    ++watchers_by_owner_[owner];
    seen_seq = s->seq;
  }
  grpc::Status result = grpc::Status::OK;
  while (true) {
    pb::WatchEvent event;
    bool terminal = false;
    {
      absl::MutexLock lock(&mu_);
      const absl::Time until = MonotonicNow() + absl::Seconds(1);
      while (!shutdown_ && s->version == seen_version && !ctx->IsCancelled() && MonotonicNow() < until) {
        s->changed.WaitWithTimeout(&mu_, until - MonotonicNow());
      }
      if (shutdown_) {
        result = {grpc::StatusCode::UNAVAILABLE, "coordinator shutting down; reconnect"};
        break;
      }
      if (ctx->IsCancelled()) break;
      if (s->version == seen_version) continue;  // a quiet second
      const bool first = seen_version == 0;  // a new stream also gets the warnings from before it
      seen_version = s->version;
      FillStatus(*s, event.mutable_status());
      for (const auto& [q, f] : s->recent_files) {
        if (q > seen_seq) event.add_new_files(f);
      }
      for (const auto& [q, f] : s->recent_failures) {
        if (q > seen_seq) event.add_failures(f);
      }
      for (const auto& [q, w] : s->recent_warnings) {
        if (q > seen_seq || first) event.add_warnings(w);
      }
      seen_seq = s->seq;
      terminal = Terminal(s->state);
    }
    if (!writer->Write(event)) break;
    if (terminal) break;
    // At most ~4 events a second: changes in between are merged.
    absl::SleepFor(absl::Milliseconds(250));
  }
  absl::MutexLock lock(&mu_);
  --watchers_;
  if (--watchers_by_owner_[owner] <= 0) watchers_by_owner_.erase(owner);
  return result;
}

grpc::Status Coordinator::Impl::Cancel(const std::string& ref, pb::SweepStatus* out) {
  std::shared_ptr<Sweep> s = Find(ref);
  if (!s) return {grpc::StatusCode::NOT_FOUND, "no sweep with id or name '" + ref + "'"};
  {
    absl::MutexLock lock(&mu_);
    if (Terminal(s->state)) {
      FillStatus(*s, out);
      return grpc::Status::OK;
    }
  }
  auto redis = pool_.Acquire();
  if (!redis.ok()) return ToGrpc(redis.status());
  // Holding out_mu: no image write is in progress, and none starts after this.
  absl::MutexLock out_lock(&s->out_mu);
  auto r = Eval(redis->get(), {"EVAL", kCancelScript, "3", StreamKey(s->model), SweepKey(s->id) + ":inflight",
                              SweepKey(s->id), JobQueue::kGroup});
  if (!r.ok()) return ToGrpc(r.status());
  absl::MutexLock lock(&mu_);
  s->state = State::kCancelled;
  s->inflight.clear();
  Changed(*s);
  FillStatus(*s, out);
  Log(absl::StrCat("sweep ", s->name, " (", s->id, ") cancelled at ", s->done, "/", s->total));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::SetPaused(const std::string& ref, bool paused, pb::SweepStatus* out) {
  std::shared_ptr<Sweep> s = Find(ref);
  if (!s) return {grpc::StatusCode::NOT_FOUND, "no sweep with id or name '" + ref + "'"};
  {
    absl::MutexLock lock(&mu_);
    if (Terminal(s->state)) {
      return {grpc::StatusCode::FAILED_PRECONDITION,
              absl::StrCat("sweep ", s->name, " is ", StateName(s->state), "; it cannot be ", paused ? "paused" : "resumed")};
    }
  }
  auto redis = pool_.Acquire();
  if (!redis.ok()) return ToGrpc(redis.status());
  absl::StatusOr<RedisReply> r =
      paused ? Eval(redis->get(), {"EVAL", kPauseScript, "3", StreamKey(s->model), SweepKey(s->id) + ":inflight",
                                  SweepKey(s->id), JobQueue::kGroup, ""})
             : Eval(redis->get(), {"EVAL", kResumeScript, "1", SweepKey(s->id)});
  if (!r.ok()) return ToGrpc(r.status());
  {
    absl::MutexLock lock(&mu_);
    s->state = paused ? State::kPaused : State::kRunning;
    wake_scheduler_ = true;
    Changed(*s);
  }
  if (paused) {
    Log(absl::StrCat("sweep ", s->name, " (", s->id, ") paused at ", s->done, "/", s->total, "; ",
                     r->AsInt().value_or(0), " waiting jobs taken out of the queue"));
  } else {
    // Its jobs taken out of the queue by the pause go back in now.
    if (absl::Status st = Reconcile(*s); !st.ok()) Log(absl::StrCat("sweep ", s->name, ": resume: ", st.ToString()));
    Log(absl::StrCat("sweep ", s->name, " (", s->id, ") resumed at ", s->done, "/", s->total));
  }
  absl::MutexLock lock(&mu_);
  FillStatus(*s, out);
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::Remove(const pb::RemoveRequest& req, pb::RemoveResponse* out) {
  std::shared_ptr<Sweep> s = Find(req.sweep());
  if (!s) return {grpc::StatusCode::NOT_FOUND, "no sweep with id or name '" + req.sweep() + "'"};
  auto redis = pool_.Acquire();
  if (!redis.ok()) return ToGrpc(redis.status());
  // Holding out_mu: no image write is in progress, and none starts after this.
  absl::MutexLock out_lock(&s->out_mu);
  auto r = Eval(redis->get(), {"EVAL", kRemoveSweepScript, "8", SweepKey(s->id), SweepKey(s->id) + ":inflight",
                              SweepKey(s->id) + ":failures", SweepKey(s->id) + ":failed",
                              Key("request:" + s->request_id), Key("name:" + s->name), Key("sweeps"),
                              StreamKey(s->model), s->id, JobQueue::kGroup});
  if (!r.ok()) return ToGrpc(r.status());
  {
    absl::MutexLock lock(&mu_);
    s->state = State::kCancelled;  // reports still arriving are discarded
    s->inflight.clear();
    Changed(*s);
    sweeps_.erase(s->id);
    if (auto n = names_.find(s->name); n != names_.end() && n->second == s->id) names_.erase(n);
  }
  s->output.reset();
  out->set_sweep_id(s->id);
  out->set_name(s->name);
  out->set_output_dir(s->output_dir);
  // The folder is recomputed from the validated name, never taken from Redis.
  const std::filesystem::path dir = std::filesystem::path(opt_.output_root) / s->name;
  if (req.keep_files() && IsSafeFileName(s->name)) {
    // Never adopted again automatically (sweep_adopt.h); sdfarm adopt still can.
    std::ofstream((dir / kRemovedMarker).string()) << s->id << "\n";
  }
  if (!req.keep_files() && IsSafeFileName(s->name)) {
    std::error_code ec;
    const std::uintmax_t n = std::filesystem::remove_all(dir, ec);
    if (ec) {
      return {grpc::StatusCode::INTERNAL, absl::StrCat("sweep ", s->name, " is forgotten, but its folder ",
                                                       dir.string(), " could not be deleted: ", ec.message())};
    }
    out->set_files_deleted(static_cast<int64_t>(n == static_cast<std::uintmax_t>(-1) ? 0 : n));
  }
  Log(absl::StrCat("sweep ", s->name, " (", s->id, ") removed", req.keep_files() ? " (files kept in " : " (deleted ",
                   dir.string(), ")"));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::Workers(pb::WorkersResponse* out) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  // Workers that stopped without saying so are listed as lost for a while.
  const absl::Time mono = MonotonicNow();
  std::erase_if(workers_, [&](const auto& kv) {
    if (mono - kv.second.last_seen <= kForgetLostWorker) return false;
    sessions_.erase(kv.second.session);
    return true;
  });
  for (const std::string& w : farm_warnings_) out->add_warnings(w);
  for (auto& [id, w] : workers_) {
    pb::WorkerStatus* ws = out->add_workers();
    ws->set_lost(!Live(w));
    ws->set_worker_id(id);
    *ws->mutable_info() = w.info;
    ws->set_last_heartbeat_unix_ms(absl::ToUnixMillis(w.last_heartbeat));
    for (const auto& j : w.jobs) *ws->add_jobs() = j;
    ws->set_images_per_second(Live(w) ? w.rate.PerSecond(now) : 0);
    ws->set_draining(w.draining);
    ws->set_images_done(w.images_done);
    ws->set_current_job_id(w.current_job);
    *ws->mutable_last_step() = w.last_step;
  }
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::Get(grpc::ServerContext* ctx, const std::string& ref,
                                    grpc::ServerWriter<pb::FileChunk>* writer) {
  std::shared_ptr<Sweep> s = Find(ref);
  if (!s) return {grpc::StatusCode::NOT_FOUND, "no sweep with id or name '" + ref + "'"};
  // The folder is recomputed from the validated name and opened without
  // following symlinks; so is every file in it (sweep_folder_reader.h).
  auto folder = SweepFolderReader::Open(SweepDir(s->name));
  if (!folder.ok()) return ToGrpc(folder.status());
  constexpr size_t kChunk = 1 << 20;
  for (const std::string& name : (*folder)->Files()) {
    absl::Status st = (*folder)->ReadFile(name, kChunk, [&](int64_t offset, std::string_view data, bool last) {
      if (ctx->IsCancelled()) return absl::CancelledError("cancelled by the client");
      pb::FileChunk chunk;
      chunk.set_path(name);
      chunk.set_offset(offset);
      chunk.set_data(data.data(), data.size());
      chunk.set_last(last);
      if (!writer->Write(chunk)) return absl::CancelledError("client went away");
      return absl::OkStatus();
    });
    if (absl::IsNotFound(st)) continue;  // removed meanwhile
    if (!st.ok()) return ToGrpc(st);
  }
  return grpc::Status::OK;
}

// ------------------------------------------------------------ worker calls --

grpc::Status Coordinator::Impl::Register(const pb::RegisterRequest& req, pb::RegisterResponse* resp) {
  const pb::WorkerInfo& info = req.info();
  if (!IsSafeFileName(info.model())) {
    return {grpc::StatusCode::INVALID_ARGUMENT, "model name '" + info.model() + "' is not a valid name"};
  }
  std::string id = req.worker_id();
  if (!id.empty() && !IsSafeFileName(id)) return {grpc::StatusCode::INVALID_ARGUMENT, "bad worker_id '" + id + "'"};
  if (id.empty()) id = absl::StrCat(IsSafeFileName(info.host()) ? info.host() : "worker", "-", RandomHex(3));
  const std::string session = NewSessionSecret();
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    // A worker id is its consumer name, and with it the jobs it holds. A
    // worker registering again (its own restart, or the coordinator's) keeps
    // its id, but only from a registration that is gone: not while a live
    // one holds it, unless the caller shows that registration's session.
    // (A restarted coordinator knows no session: every old id is free.)
    if (auto held = workers_.find(id); held != workers_.end() && Live(held->second) &&
                                       !ConstantTimeEquals(req.session(), held->second.session)) {
      return {grpc::StatusCode::ALREADY_EXISTS,
              absl::StrCat("worker id '", id, "' is held by a live worker (last heartbeat ",
                           absl::FormatDuration(absl::Trunc(now - held->second.last_heartbeat, absl::Milliseconds(100))),
                           " ago); give another --worker-id, or wait ", absl::FormatDuration(opt_.heartbeat_timeout),
                           " after it stopped")};
    }
    // Workers of one model must hold the same weights, or one sweep's images
    // would come from different models.
    for (auto& [wid, w] : workers_) {
      if (wid != id && w.info.model() == info.model() && Live(w) &&
          w.info.model_hash() != info.model_hash()) {
        return {grpc::StatusCode::FAILED_PRECONDITION,
                absl::StrCat("model '", info.model(), "' is served by worker ", wid, " with weights hash ",
                             w.info.model_hash(), "; this worker's weights hash ", info.model_hash(),
                             ": give the model another name")};
      }
    }
    WorkerRecord& w = workers_[id];
    if (!w.session.empty()) sessions_.erase(w.session);  // the old registration's session ends here
    w.session = session;
    sessions_[session] = id;
    w.handed.clear();
    w.info = info;
    w.last_heartbeat = now;
    w.last_seen = MonotonicNow();
    w.draining = false;
    wake_scheduler_ = true;
  }
  resp->set_worker_id(id);
  resp->set_session(session);
  resp->set_lease_ms(absl::ToInt64Milliseconds(opt_.lease));
  resp->set_max_attempts(opt_.max_attempts);
  Log(absl::StrCat("worker ", id, " registered: ", info.host(), " ", info.device(), " ", info.device_name(),
                   ", model ", info.model(), " (hash ", info.model_hash(), "), batch ", info.batch_size()));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::CallerWorker(const grpc::ServerContext* ctx, const std::string& claimed_id,
                                             std::string* worker, std::string* model) {
  const std::string session = CallSession(*ctx);
  absl::MutexLock lock(&mu_);
  auto it = session.empty() ? sessions_.end() : sessions_.find(session);
  if (it == sessions_.end()) {
    return {grpc::StatusCode::NOT_FOUND,
            session.empty() ? "no worker session (sdfarm-session metadata); register first"
                            : "unknown worker session (the coordinator restarted?); register again"};
  }
  if (!claimed_id.empty() && claimed_id != it->second) {
    return {grpc::StatusCode::PERMISSION_DENIED,
            absl::StrCat("this session belongs to worker ", it->second, ", not ", claimed_id)};
  }
  *worker = it->second;
  auto w = workers_.find(*worker);
  if (w == workers_.end()) return {grpc::StatusCode::NOT_FOUND, "unknown worker " + *worker + "; register again"};
  *model = w->second.info.model();
  return grpc::Status::OK;
}

absl::StatusOr<std::optional<QueuedJob>> Coordinator::Impl::TryClaim(const std::string& worker,
                                                                      const std::string& model) {
  std::set<std::string> handed;
  std::map<std::string, absl::Time> failed_here;
  {
    absl::MutexLock lock(&mu_);
    auto w = workers_.find(worker);
    if (w == workers_.end()) return std::nullopt;
    handed = w->second.handed;
    failed_here = w->second.failed_here;
  }
  // A pooled connection only for the Redis calls, never while waiting.
  ASSIGN_OR_RETURN(auto redis, pool_.Acquire());
  RETURN_IF_ERROR(CheckLeader(redis.get()));
  JobQueue q(redis.get(), opt_.key_prefix);
  const std::string stream = StreamKey(model);
  // 1. What it held before it registered again: its own restart (same
  //    --worker-id) or the coordinator's. It holds nothing now (it claims).
  std::set<std::string> pending;
  bool complete = false;
  ASSIGN_OR_RETURN(std::optional<QueuedJob> job,
                   RedeliverOwn(redis.get(), stream, worker, handed, &pending, &complete));
  if (complete) {
    // Deliveries no longer pending for it need no remembering (bounded memory).
    absl::MutexLock lock(&mu_);
    auto w = workers_.find(worker);
    if (w != workers_.end()) std::erase_if(w->second.handed, [&](const std::string& id) { return !pending.count(id); });
  }
  if (!job) {
    // 2. Jobs whose worker let the lease expire. A job this worker failed
    //    goes to another worker first ("retried elsewhere"): it is released
    //    for reclaiming at once, and this worker, free first, would take it
    //    straight back. So for one lease after the failure it reclaims
    //    nothing while that job waits to be reclaimed; after that it takes
    //    it too (a farm of one worker still retries it).
    bool leave_reclaims = false;
    const absl::Time now = MonotonicNow();
    std::vector<std::string> settled;
    for (const auto& [id, until] : failed_here) {
      if (until <= now) {
        settled.push_back(id);
        continue;
      }
      ASSIGN_OR_RETURN(RedisReply p, redis->Command({"XPENDING", stream, JobQueue::kGroup, "IDLE",
                                                     absl::StrCat(absl::ToInt64Milliseconds(opt_.lease)), id, id,
                                                     "1"}));
      if (p.array().empty()) {
        settled.push_back(id);  // taken (or finished) by another worker
        continue;
      }
      leave_reclaims = true;
    }
    if (!settled.empty()) {
      absl::MutexLock lock(&mu_);
      auto w = workers_.find(worker);
      if (w != workers_.end()) {
        for (const std::string& id : settled) w->second.failed_here.erase(id);
      }
    }
    if (!leave_reclaims) {
      ASSIGN_OR_RETURN(std::vector<QueuedJob> reclaimed, q.ReclaimExpired(model, worker, opt_.lease, 1));
      if (!reclaimed.empty()) job = std::move(reclaimed.front());
    }
  }
  // 3. A new job (never blocking: the wait is Claim's, without a connection).
  if (!job) {
    ASSIGN_OR_RETURN(job, q.Claim(model, worker, absl::ZeroDuration()));
  }
  if (job) {
    absl::MutexLock lock(&mu_);
    auto w = workers_.find(worker);
    if (w != workers_.end()) w->second.handed.insert(job->stream_id);
  }
  return job;
}

grpc::Status Coordinator::Impl::Claim(grpc::ServerContext* ctx, const pb::ClaimRequest& req,
                                      pb::ClaimResponse* resp) {
  std::string worker, model;
  if (grpc::Status st = CallerWorker(ctx, "", &worker, &model); !st.ok()) return st;
  const absl::Duration wait =
      std::clamp(absl::Milliseconds(req.max_wait_ms()), absl::ZeroDuration(), kMaxClaimWait);
  const absl::Time deadline = MonotonicNow() + wait;  // monotonic: a clock step neither ends nor stretches it
  while (true) {
    uint64_t seen = 0;
    {
      absl::MutexLock lock(&mu_);
      auto w = workers_.find(worker);
      if (w == workers_.end()) return {grpc::StatusCode::NOT_FOUND, "unknown worker " + worker + "; register again"};
      if (w->second.draining || shutdown_) return grpc::Status::OK;  // nothing for a draining worker
      seen = model_enqueued_[model];
    }
    absl::StatusOr<std::optional<QueuedJob>> job = TryClaim(worker, model);
    if (!job.ok()) return ToGrpc(job.status());
    if (job->has_value()) {
      pb::ClaimedJob* out = resp->mutable_job();
      out->set_stream_id((*job)->stream_id);
      out->set_job_id((*job)->job_id);
      out->set_payload((*job)->payload);
      out->set_deliveries((*job)->deliveries);
      return grpc::Status::OK;
    }
    absl::MutexLock lock(&mu_);
    // (A relative wait: absl's CondVar deadlines are wall-clock times.)
    const absl::Time poll = std::min(deadline, MonotonicNow() + kClaimPoll);
    while (!shutdown_ && model_enqueued_[model] == seen && !ctx->IsCancelled() && MonotonicNow() < poll) {
      changed_.WaitWithTimeout(&mu_, poll - MonotonicNow());
    }
    if (shutdown_ || ctx->IsCancelled() || MonotonicNow() >= deadline) return grpc::Status::OK;
  }
}

grpc::Status Coordinator::Impl::Heartbeat(grpc::ServerContext* ctx, const pb::HeartbeatRequest& req,
                                          pb::HeartbeatResponse* resp) {
  std::string worker, model;
  if (grpc::Status st = CallerWorker(ctx, req.worker_id(), &worker, &model); !st.ok()) return st;
  struct Held {
    std::shared_ptr<Sweep> sweep;
    std::string stream_id, job_id;
    int64_t job_index;
  };
  std::vector<Held> held;
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker);
    if (it == workers_.end()) {
      return {grpc::StatusCode::NOT_FOUND, "unknown worker " + worker + "; register again"};
    }
    if (req.exiting()) {
      // Its last call: it holds nothing any more (a job it dropped comes back after its lease).
      Log(absl::StrCat("worker ", worker, " stopped"));
      sessions_.erase(it->second.session);
      workers_.erase(it);
      wake_scheduler_ = true;
      return grpc::Status::OK;
    }
    WorkerRecord& w = it->second;
    w.last_heartbeat = absl::Now();
    w.last_seen = MonotonicNow();
    w.draining = req.draining();
    w.jobs.assign(req.jobs().begin(), req.jobs().end());
    if (req.jobs().empty()) w.current_job.clear();
    for (const pb::HeldJob& j : req.jobs()) {
      auto parsed = ParseJobId(j.job_id());
      std::shared_ptr<Sweep> s;
      if (parsed.ok()) {
        auto sit = sweeps_.find(parsed->first);
        if (sit != sweeps_.end()) s = sit->second;
      }
      if (!s || s->state == State::kCancelled) {
        resp->add_cancelled_job_stream_ids(j.stream_id());
      } else if (s->model != model || parsed->second < 0 || parsed->second >= s->jobs) {
        resp->add_lost_job_stream_ids(j.stream_id());  // not a job this worker can hold
      } else {
        w.handed.insert(j.stream_id());
        held.push_back({s, j.stream_id(), j.job_id(), parsed->second});
      }
    }
  }
  if (!held.empty()) {
    // Renewing the lease is the heartbeat's job: each held delivery, if it is
    // still this worker's and still that job, gets its idle time reset.
    auto redis = pool_.Acquire();
    if (redis.ok() && CheckLeader(redis->get()).ok()) {
      for (const Held& h : held) {
        auto b = RenewBinding(redis->get(), Delivery(*h.sweep, worker, h.stream_id, h.job_id, h.job_index));
        if (!b.ok()) continue;  // Redis trouble: the lease is long; the next heartbeat tries again
        if (*b == Binding::kMismatch) {
          Log(absl::StrCat("worker ", worker, " lists delivery ", h.stream_id, " as job ", h.job_id,
                           ", which it is not: refused"));
        }
        if (*b != Binding::kBound) resp->add_lost_job_stream_ids(h.stream_id);
      }
    }
  }
  return grpc::Status::OK;
}

void Coordinator::Impl::HoldJobForStorage(Sweep& s, const std::string& worker, const std::string& stream_id,
                                          const std::string& job_id, int64_t job_index, const absl::Status& why,
                                          RedisClient* redis) {
  {
    absl::MutexLock lock(&mu_);
    const std::string problem(why.message());
    if (s.storage_problem != problem) {
      Log(absl::StrCat("sweep ", s.name, ": cannot store images: ", problem, "; its jobs wait and are retried every ",
                       absl::FormatDuration(kStorageRetryInterval), " (not counted as failures)"));
      s.storage_problem = problem;
      s.recent_warnings.emplace_back(++s.seq, StorageWarning(s));
      if (s.recent_warnings.size() > kRecentEvents) s.recent_warnings.pop_front();
    }
    s.storage_retry_at = MonotonicNow() + kStorageRetryInterval;
    Changed(s);
  }
  auto r = Eval(redis, {"EVAL", kHoldJobForStorageScript, "2", StreamKey(s.model), SweepKey(s.id) + ":inflight",
                        JobQueue::kGroup, worker, stream_id, job_id, absl::StrCat(job_index)});
  // On a Redis error the job simply stays the worker's until its lease ends.
  if (!r.ok()) Log(absl::StrCat("sweep ", s.name, ": cannot hold job ", stream_id, ": ", r.status().ToString()));
}

absl::Status Coordinator::Impl::CheckImageBeforeDecoding(Sweep& s, const std::string& worker,
                                                         const std::string& stream_id, const std::string& job_id,
                                                         int64_t job_index, const Item& item,
                                                         const pb::FinishedImage& image, RedisClient* redis,
                                                         bool* lost) {
  // The same binding as the finish and the failure: this worker's delivery,
  // of this job, the one the sweep has in flight for it.
  ASSIGN_OR_RETURN(Binding binding, CheckBinding(redis, Delivery(s, worker, stream_id, job_id, job_index)));
  if (binding == Binding::kMismatch) {
    return absl::PermissionDeniedError(
        absl::StrCat("delivery ", stream_id, " is not job ", job_id, "'s; nothing was written"));
  }
  if (binding != Binding::kBound) {
    *lost = true;
    return absl::OkStatus();
  }
  if (absl::Status h = CheckPngHeader(image.png(), {item.width, item.height}); !h.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("image for item ", item.index, ": ", h.message()));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Impl::HandleImage(Sweep& s, const std::string& worker, int64_t job_index,
                                            const std::string& stream_id, const std::string& job_id,
                                            const pb::FinishedImage& image,
                                            absl::Time job_started, RedisClient* redis, bool* lost, bool* cancelled) {
  const JobSlice job = s.expander->JobAt(job_index);
  if (image.item_index() < job.first_item || image.item_index() >= job.first_item + job.count) {
    return absl::InvalidArgumentError(absl::StrCat("item ", image.item_index(), " is not in job ", job_index));
  }
  const Item item = s.expander->ItemAt(image.item_index());
  const std::string file_name = s.expander->FileName(item);

  // A sweep cancelled meanwhile keeps nothing; a redelivery of an image
  // already on disk (a report sent again after its answer was lost, also once
  // the job is finished) is skipped unread.
  {
    absl::MutexLock lock(&mu_);
    if (s.state == State::kCancelled) {
      *cancelled = true;
      return absl::OkStatus();
    }
  }
  {
    absl::MutexLock out_lock(&s.out_mu);
    if (s.output && s.output->IsRecorded(file_name)) return absl::OkStatus();
  }
  // Nothing is decoded before the reporter is known to hold the job and the
  // PNG's header fits the item.
  RETURN_IF_ERROR(CheckImageBeforeDecoding(s, worker, stream_id, job_id, job_index, item, image, redis, lost));
  if (*lost) return absl::OkStatus();

  // Check the image before taking any lock: it must decode, and its embedded
  // parameters must be this item's.
  auto text = engine::DecodePngText(image.png());
  if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("image for item ", item.index, ": ", text.status().message()));
  std::string parameters;
  for (const auto& [k, v] : *text) {
    if (k == "parameters") parameters = v;
  }
  auto params = engine::ParseA1111Parameters(parameters);
  if (!params.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("image for item ", item.index, " has no valid parameters chunk"));
  }
  // (Prompts are not compared: A1111's format strips whitespace around prompt lines.)
  if (params->seed != item.seed || params->cfg_scale != item.guidance_scale || params->width != item.width ||
      params->height != item.height || params->steps != item.steps) {
    return absl::InvalidArgumentError(absl::StrCat("image for item ", item.index,
                                                   " carries parameters of another image (seed ", params->seed, ")"));
  }

  absl::MutexLock out_lock(&s.out_mu);
  {
    absl::MutexLock lock(&mu_);
    if (s.state == State::kCancelled) {
      *cancelled = true;
      return absl::OkStatus();
    }
  }
  if (!s.output) return absl::FailedPreconditionError("sweep " + s.name + " has no open output");
  if (s.output->IsRecorded(file_name)) return absl::OkStatus();  // recorded meanwhile by another delivery
  RETURN_IF_ERROR(s.output->WriteImage(file_name, image.png()));
  RowContext row_ctx{.sweep_id = s.id, .sweep_name = s.name, .model = s.model, .job_index = job_index,
                     .worker = worker, .seeds_as_strings = s.seeds_as_strings,
                     .render_seconds = image.render_seconds(), .prompt_tokens_dropped = image.dropped_tokens(),
                     .parameters = parameters};
  {
    absl::MutexLock lock(&mu_);
    if (auto w = workers_.find(worker); w != workers_.end()) row_ctx.sdxl = w->second.info.sdxl();
  }
  const nlohmann::json row = MetadataRow(s.spec, item, *params, row_ctx);
  ASSIGN_OR_RETURN(bool added, s.output->RecordImage(file_name, row));
  {
    absl::MutexLock lock(&mu_);
    if (!s.storage_problem.empty()) {
      Log(absl::StrCat("sweep ", s.name, ": images are stored again (", s.storage_problem, " is over)"));
      s.storage_problem.clear();
      wake_scheduler_ = true;
      Changed(s);
    }
  }
  if (added) {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    ++s.done;
    const absl::Time started = std::min(job_started, now - absl::Seconds(std::max(0.0, image.render_seconds())));
    s.worker_rates[worker].Add(now, started);
    auto w = workers_.find(worker);
    if (w != workers_.end()) {
      w->second.rate.Add(now, started);
      ++w->second.images_done;
    }
    s.recent_files.emplace_back(++s.seq, file_name);
    if (s.recent_files.size() > kRecentEvents) s.recent_files.pop_front();
    if (image.dropped_tokens() > 0) {
      Warn(s, absl::StrCat("the prompt \"", PromptHead(item.prompt), "\" is longer than CLIP reads: ",
                           image.dropped_tokens(), " of its tokens were cut (", file_name,
                           "); set prompt_chunking: true (sdfarm --prompt-chunking) to keep them"));
    }
    Changed(s);
  }
  return absl::OkStatus();
}

grpc::Status Coordinator::Impl::ReportJob(grpc::ServerContext* ctx, grpc::ServerReader<pb::JobReport>* reader,
                                          pb::ReportAck* ack) {
  pb::JobReport msg;
  std::shared_ptr<Sweep> sweep;
  std::string worker, job_id, stream_id;
  int64_t job_index = -1;
  bool lost = false, cancelled = false, finished = false, bad = false, retryable = true;
  bool held = false;  // its images could not be stored: held for a retry (HoldJobForStorage)
  std::string bad_reason;
  std::optional<RedisPool::Handle> redis;
  const absl::Time stream_started = absl::Now();  // about when the job started rendering
  // The worker is the session's; a worker id in the messages must be it.
  std::string model;
  if (grpc::Status st = CallerWorker(ctx, "", &worker, &model); !st.ok()) return st;
  auto refused = [&](const std::string& why) {
    Log(absl::StrCat("report of job ", job_id, " (delivery ", stream_id, ") from ", worker, " refused: ", why));
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, why);
  };
  IdleStreamWatchdog::Guard idle(&report_watchdog_, ctx);

  while (reader->Read(&msg)) {
    idle.Touch();
    if (grpc::Status c = CheckReportMessage(msg); !c.ok()) return c;
    if (!msg.worker_id().empty() && msg.worker_id() != worker) {
      return refused(absl::StrCat("this session belongs to worker ", worker, ", not ", msg.worker_id()));
    }
    if (job_index < 0) {
      job_id = msg.job_id();
      stream_id = msg.job_stream_id();
      if (grpc::Status v = ValidateReportHeader(msg); !v.ok()) return v;
      auto parsed = ParseJobId(job_id);
      if (!parsed.ok()) return ToGrpc(parsed.status());
      sweep = Find(parsed->first);
      job_index = parsed->second;
      if (!sweep || job_index < 0 || job_index >= sweep->jobs) {
        lost = true;  // a sweep this coordinator does not know (deleted): nothing to keep
      } else if (sweep->model != model) {
        return refused(absl::StrCat("job ", job_id, " is of model ", sweep->model, "; this worker serves ", model));
      }
      if (!lost) {
        // A Redis connection only for a report about a job that can exist.
        auto h = pool_.Acquire();
        if (!h.ok()) return ToGrpc(h.status());
        redis.emplace(std::move(*h));
        // Checked before anything of the report is used: a delivery that is
        // not this job's is refused whole (nothing written, nothing counted).
        auto b = CheckBinding(redis->get(), Delivery(*sweep, worker, stream_id, job_id, job_index));
        if (!b.ok()) return ToGrpc(b.status());
        if (*b == Binding::kMismatch) {
          return refused(absl::StrCat("delivery ", stream_id, " is not job ", job_id, "'s"));
        }
        // kGone (the job is finished: a report sent again after its answer
        // was lost) goes on as before: recorded images are skipped, and the
        // finish answers that it counted.
        if (*b == Binding::kNotHeld) lost = true;
      }
    } else if (msg.job_id() != job_id || msg.job_stream_id() != stream_id) {
      return {grpc::StatusCode::INVALID_ARGUMENT, "one ReportJob stream carries one job"};
    }
    if (lost || cancelled || bad || finished || held) continue;  // drain the rest
    switch (msg.event_case()) {
      case pb::JobReport::kStep: {
        absl::MutexLock lock(&mu_);
        auto w = workers_.find(worker);
        if (w != workers_.end()) {
          w->second.current_job = job_id;
          w->second.last_step = msg.step();
          w->second.last_step.clear_preview_png();
        }
        if (sweep) Changed(*sweep);  // watchers show the steps of jobs in progress
        break;
      }
      case pb::JobReport::kImage: {
        absl::Status s = HandleImage(*sweep, worker, job_index, stream_id, job_id, msg.image(), stream_started,
                                     redis->get(), &lost, &cancelled);
        if (!s.ok()) {
          if (s.code() == absl::StatusCode::kPermissionDenied) return refused(std::string(s.message()));
          if (s.code() == absl::StatusCode::kInvalidArgument) {
            bad = true;
            bad_reason = std::string(s.message());
          } else if (IsStorageProblem(s)) {
            HoldJobForStorage(*sweep, worker, stream_id, job_id, job_index, s, redis->get());
            held = true;
          } else {
            // Disk or Redis trouble: the worker will send the report again.
            Log(absl::StrCat("job ", job_id, " from ", worker, ": cannot store image: ", s.ToString()));
            return ToGrpc(s);
          }
        }
        break;
      }
      case pb::JobReport::kDone: {
        finished = true;
        // Every item must be on disk before the job is acknowledged.
        const JobSlice job = sweep->expander->JobAt(job_index);
        std::vector<int64_t> missing;
        {
          absl::MutexLock out_lock(&sweep->out_mu);
          for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) {
            if (!sweep->output || !sweep->output->IsRecorded(sweep->expander->FileName(sweep->expander->ItemAt(i)))) {
              missing.push_back(i);
            }
          }
        }
        if (!missing.empty()) {
          bad = true;
          bad_reason = absl::StrCat("the worker reported the job done without ", missing.size(), " of its images");
          break;
        }
        auto r = Eval(redis->get(), {"EVAL", kFinishJobScript, "3", StreamKey(sweep->model), SweepKey(sweep->id),
                                    SweepKey(sweep->id) + ":inflight", JobQueue::kGroup, worker, stream_id,
                                    absl::StrCat(job_index), job_id});
        if (!r.ok()) return ToGrpc(r.status());
        const int64_t code = r->array().size() == 2 ? r->array()[0].AsInt().value_or(0) : 0;
        const int64_t jobs_done = r->array().size() == 2 ? r->array()[1].AsInt().value_or(0) : 0;
        if (code == -2) return refused(absl::StrCat("delivery ", stream_id, " is not job ", job_id, "'s"));
        if (code == -1) lost = true;
        {
          absl::MutexLock lock(&mu_);
          sweep->jobs_done = std::max(sweep->jobs_done, jobs_done);
          if (code == 1) {
            sweep->inflight.erase(job_index);
            wake_scheduler_ = true;
          }
          auto w = workers_.find(worker);
          if (w != workers_.end()) w->second.current_job.clear();
          Changed(*sweep);
        }
        MaybeFinish(*sweep, redis->get());
        break;
      }
      case pb::JobReport::kFailed: {
        finished = true;
        const pb::JobFailed& f = msg.failed();
        bad = true;
        bad_reason = f.error().empty() ? "unknown error" : f.error();
        retryable = f.retryable();
        break;
      }
      default:
        break;
    }
  }
  if (idle.cancelled()) {
    Log(absl::StrCat("job ", job_id, " from ", worker, ": report stream cancelled after ",
                     absl::FormatDuration(opt_.report_idle_timeout), " without a message"));
    return {grpc::StatusCode::DEADLINE_EXCEEDED,
            absl::StrCat("the report stream sent nothing for ", absl::FormatDuration(opt_.report_idle_timeout))};
  }
  if (job_index < 0) return {grpc::StatusCode::INVALID_ARGUMENT, "empty report"};

  if (bad && !lost && !cancelled && sweep) {
    // The job failed (or its report was unusable): count the failure, then
    // release it for another attempt or dead-letter it.
    const JobSlice job = sweep->expander->JobAt(job_index);
    std::vector<std::string> argv = {"EVAL", kFailJobScript, "6", StreamKey(sweep->model), SweepKey(sweep->id),
                                     SweepKey(sweep->id) + ":inflight", SweepKey(sweep->id) + ":failures",
                                     SweepKey(sweep->id) + ":failed", DeadKey(sweep->model), JobQueue::kGroup, worker,
                                     stream_id, absl::StrCat(job_index), absl::StrCat(opt_.max_attempts),
                                     absl::StrCat(absl::ToInt64Milliseconds(opt_.lease) + 1000),
                                     retryable ? "1" : "0", bad_reason, job_id, PayloadFor(*sweep, job_index).ToJson()};
    std::vector<std::string> failed_files;
    {
      absl::MutexLock out_lock(&sweep->out_mu);
      for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) {
        const std::string fname = sweep->expander->FileName(sweep->expander->ItemAt(i));
        if (!sweep->output || !sweep->output->IsRecorded(fname)) {
          argv.push_back(absl::StrCat(i));
          failed_files.push_back(fname);
        }
      }
    }
    auto r = Eval(redis->get(), argv);
    if (!r.ok()) return ToGrpc(r.status());
    const int64_t code = r->array().size() == 2 ? r->array()[0].AsInt().value_or(0) : 0;
    const int64_t value = r->array().size() == 2 ? r->array()[1].AsInt().value_or(0) : 0;
    if (code == -2) return refused(absl::StrCat("delivery ", stream_id, " is not job ", job_id, "'s"));
    if (code == -1) lost = true;
    if (code == 1) {
      {
        absl::MutexLock lock(&mu_);
        auto w = workers_.find(worker);
        if (w != workers_.end() && retryable) w->second.failed_here[stream_id] = MonotonicNow() + opt_.lease;
      }
      JobsArrived(sweep->model);  // released: claimable by the others now
      Log(absl::StrCat("job ", job_id, " failed on ", worker, " (attempt ", value, " of ", opt_.max_attempts,
                       "): ", bad_reason, "; handed to another worker"));
    } else if (code == 2) {
      Log(absl::StrCat("job ", job_id, " dead-lettered after failing on ", worker, ": ", bad_reason, "; ",
                       failed_files.size(), " images reported failed"));
      {
        absl::MutexLock lock(&mu_);
        sweep->jobs_done = std::max(sweep->jobs_done, value);
        sweep->inflight.erase(job_index);
        sweep->failed += static_cast<int64_t>(failed_files.size());
        for (const std::string& fname : failed_files) {
          sweep->recent_failures.emplace_back(++sweep->seq, fname + ": " + bad_reason);
          if (sweep->recent_failures.size() > kRecentEvents) sweep->recent_failures.pop_front();
        }
        wake_scheduler_ = true;
        Changed(*sweep);
      }
      MaybeFinish(*sweep, redis->get());
    }
  }
  {
    absl::MutexLock lock(&mu_);
    auto w = workers_.find(worker);
    if (w != workers_.end() && w->second.current_job == job_id) w->second.current_job.clear();
    if (sweep) Changed(*sweep);
  }
  if (lost) {
    ++discarded_reports_;
    Log(absl::StrCat("job ", job_id, " from ", worker, ": the worker no longer holds it; its results were discarded"));
  }
  ack->set_accepted(!lost && !held);
  ack->set_cancel(cancelled);
  return grpc::Status::OK;
}

// ------------------------------------------------- Redis losing state --
// The pieces are in sweep_adopt.h; docs/farm.md, "When Redis loses state".

std::vector<std::string> Coordinator::Impl::AdoptArgv(const std::string& id, const std::string& name,
                                                      const std::string& model, const std::string& spec_json, const std::string& state,
                                                      int job_size, const SweepExpander& expander,
                                                      int64_t created_ms, const std::string& request_id) {
  std::vector<std::string> argv = {"EVAL", kAdoptSweepScript, "7", SweepKey(id), SweepKey(id) + ":inflight",
                                   SweepKey(id) + ":failures", SweepKey(id) + ":failed", Key("name:" + name),
                                   Key("sweeps"), Key("request:" + request_id), id, name, absl::StrCat(created_ms),
                                   Key("sweep:"), request_id.empty() ? "0" : "1"};
  for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
           {"name", name},
           {"model", model},
           {"spec", spec_json},
           {"state", state},
           {"job_size", absl::StrCat(job_size)},
           {"total", absl::StrCat(expander.num_items())},
           {"jobs", absl::StrCat(expander.num_jobs())},
           {"next_job", "0"},
           {"jobs_done", "0"},
           {"created_ms", absl::StrCat(created_ms)},
           {"request_id", request_id},
           {"output_dir", SweepDir(name)},
           {"adopted_ms", absl::StrCat(NowMs())}}) {
    argv.push_back(k);
    argv.push_back(v);
  }
  return argv;
}

absl::Status Coordinator::Impl::AdoptCached(Sweep& s, RedisClient* redis, const std::string& why) {
  // Holding out_mu: no cancel, removal or image write runs meanwhile.
  absl::MutexLock out_lock(&s.out_mu);
  std::string state;
  {
    absl::MutexLock lock(&mu_);
    auto it = sweeps_.find(s.id);
    if (Terminal(s.state) || it == sweeps_.end() || it->second.get() != &s) return absl::OkStatus();
    state = StateName(s.state);
  }
  Log(absl::StrCat("ERROR: sweep ", s.name, " (", s.id, "): ", why, "; rebuilding it from its folder ", s.output_dir));
  auto fail = [&](const absl::Status& st) {
    absl::MutexLock lock(&mu_);
    if (!s.state_lost) {
      s.state_lost = true;
      Warn(s, absl::StrCat("Redis lost this sweep's state and rebuilding it failed: ", st.message(),
                           "; nothing more is scheduled until it is fixed (sdfarm adopt ", s.name, ")"));
      Changed(s);
    }
    Log(absl::StrCat("ERROR: sweep ", s.name, ": cannot rebuild its state: ", st.ToString()));
    return st;
  };
  if (!s.output) return fail(absl::FailedPreconditionError("its folder is not open"));
  // sweep.json is what the coordinator wrote when it took the sweep; the
  // cached spec stands in when it is unreadable.
  auto folder = ReadSweepFolder(opt_.output_root, s.name, opt_.limits);
  const std::string spec_json = folder.ok() ? folder->spec_json.dump() : s.spec.ToJson().dump();
  auto r = Eval(redis, AdoptArgv(s.id, s.name, s.model, spec_json, state, s.job_size, *s.expander, s.created_ms, s.request_id));
  if (!r.ok()) return fail(r.status());
  const int64_t code = r->array().size() == 2 ? r->array()[0].AsInt().value_or(-1) : -1;
  if (code == 2) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("its name now belongs to sweep ", r->array()[1].str(), " (sdfarm rm it, or submit this one under another name)")));
  }
  if (code != 0 && code != 1) return fail(absl::InternalError("unexpected reply " + r->DebugString()));
  const int64_t on_disk = static_cast<int64_t>(s.output->recorded());
  absl::MutexLock lock(&mu_);
  if (code == 0) {
    s.next_job = 0;
    s.inflight.clear();
    s.jobs_done = 0;
    s.failed = 0;
    ++s.recoveries;
    s.last_repair = absl::StrCat("repair ", s.recoveries, ": ", why, "; rebuilt from the folder: ", on_disk, " of ",
                                 s.total, " images on disk kept, the rest rendered again");
    Warn(s, s.last_repair);
    Log(absl::StrCat("sweep ", s.name, " (", s.id, ") rebuilt in Redis from ", s.output_dir, ": ", on_disk, " of ",
                     s.total, " images on disk are kept; ", s.total - on_disk, " to render"));
  }
  s.done = on_disk;
  s.state_lost = false;
  wake_scheduler_ = true;
  Changed(s);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Sweep>> Coordinator::Impl::AdoptFolder(const std::string& name, RedisClient* redis,
                                                                      const std::string& why, bool* adopted) {
  *adopted = false;
  ASSIGN_OR_RETURN(SweepFolder folder, ReadSweepFolder(opt_.output_root, name, opt_.limits));
  const std::string id = folder.sweep_id.empty() ? RandomHex(8) : folder.sweep_id;
  SweepExpander expander(folder.spec, opt_.job_size);
  ASSIGN_OR_RETURN(RedisReply r, Eval(redis, AdoptArgv(id, name, folder.spec.model, folder.spec_json.dump(),
                                                       opt_.hold_unfinished ? "paused" : "running", opt_.job_size,
                                                       expander, NowMs(), "")));
  const int64_t code = r.array().size() == 2 ? r.array()[0].AsInt().value_or(-1) : -1;
  if (code == 2) {
    return absl::AlreadyExistsError(absl::StrCat("the name '", name, "' belongs to sweep ", r.array()[1].str(),
                                                 ", which has its state in Redis; nothing to adopt"));
  }
  if (code != 0 && code != 1) return absl::InternalError("unexpected reply " + r.DebugString());
  ASSIGN_OR_RETURN(std::shared_ptr<Sweep> sweep, LoadSweep(redis, id));
  *adopted = code == 0;
  if (*adopted) {
    std::error_code ec;
    std::filesystem::remove(SweepDir(name) + "/" + kRemovedMarker, ec);
    ++sweep->recoveries;
    sweep->last_repair = absl::StrCat("repair ", sweep->recoveries, ": adopted from its folder (", why, "): ",
                                      sweep->done, " of ", sweep->total, " images on disk kept, the rest rendered");
    sweep->warnings.insert(sweep->last_repair);
    sweep->recent_warnings.emplace_back(++sweep->seq, sweep->last_repair);
    Log(absl::StrCat("sweep ", name, " (", id, ") adopted from ", opt_.output_root, "/", name, " (", why, "): ",
                     sweep->done, " of ", sweep->total, " images on disk are kept; ", sweep->total - sweep->done,
                     " to render"));
  }
  absl::MutexLock lock(&mu_);
  if (auto it = sweeps_.find(id); it != sweeps_.end()) return it->second;  // loaded meanwhile
  sweep->pass = StartPass(*sweep);
  sweeps_[id] = sweep;
  names_[name] = id;
  wake_scheduler_ = true;
  changed_.SignalAll();
  return sweep;
}

void Coordinator::Impl::AdoptOrphanFolders(RedisClient* redis) {
  for (const std::string& name : SweepFoldersUnder(opt_.output_root)) {
    {
      absl::MutexLock lock(&mu_);
      if (names_.count(name)) continue;
    }
    bool adopted = false;
    auto s = AdoptFolder(name, redis, "found at start-up without state in Redis", &adopted);
    if (!s.ok() && !absl::IsAlreadyExists(s.status())) {
      Log(absl::StrCat("WARNING: cannot adopt the sweep folder ", opt_.output_root, "/", name, ": ",
                       s.status().ToString()));
    }
  }
}

std::string Coordinator::Impl::FillSize(SweepSpec* spec) {
  std::optional<SweepSpec> earlier;
  if (std::shared_ptr<Sweep> cached = Find(spec->name); cached && cached->name == spec->name) {
    earlier = cached->spec;
  } else if (auto folder = ReadSweepFolder(opt_.output_root, spec->name, opt_.limits); folder.ok()) {
    earlier = folder->spec;
  }
  std::vector<Size> native;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, w] : workers_) {
      if (Live(w) && w.info.model() == spec->model) native.push_back({w.info.native_width(), w.info.native_height()});
    }
  }
  return FillDefaultSize(spec, earlier ? &*earlier : nullptr, native);
}

grpc::Status Coordinator::Impl::AdoptResubmitted(const SweepSpec& spec, pb::SubmitResponse* resp) {
  const nlohmann::json canonical = spec.ToJson();
  std::shared_ptr<Sweep> cached = Find(spec.name);
  if (cached) {
    if (cached->id != spec.name && cached->name != spec.name) return {grpc::StatusCode::NOT_FOUND, ""};
    if (cached->spec.ToJson() != canonical) return {grpc::StatusCode::NOT_FOUND, ""};
  } else {
    auto folder = ReadSweepFolder(opt_.output_root, spec.name, opt_.limits);
    if (!folder.ok() || folder->spec_json != canonical) return {grpc::StatusCode::NOT_FOUND, ""};
  }
  auto redis = pool_.Acquire();
  if (!redis.ok()) return ToGrpc(redis.status());
  if (cached) {
    auto has = HasState(redis->get(), cached->id);
    if (!has.ok()) return ToGrpc(has.status());
    if (*has) {
      // Adopted or repaired already: the same spec is that sweep. Any other
      // live sweep: Submit's usual rules (the name is taken).
      absl::MutexLock lock(&mu_);
      if (cached->recoveries == 0) return {grpc::StatusCode::NOT_FOUND, ""};
      resp->set_sweep_id(cached->id);
      return grpc::Status::OK;
    }
    absl::Status st = AdoptCached(*cached, redis->get(), "its state is gone from Redis; submitted again with the same spec");
    if (!st.ok()) return ToGrpc(st);
    resp->set_sweep_id(cached->id);
    return grpc::Status::OK;
  }
  bool adopted = false;
  auto s = AdoptFolder(spec.name, redis->get(), "submitted again with the same spec", &adopted);
  if (absl::IsAlreadyExists(s.status())) return {grpc::StatusCode::NOT_FOUND, ""};  // Submit refuses the name
  if (!s.ok()) return ToGrpc(s.status());
  resp->set_sweep_id((*s)->id);
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::Adopt(const pb::AdoptRequest& req, pb::AdoptResponse* out) {
  if (!IsSafeFileName(req.name())) {
    return {grpc::StatusCode::INVALID_ARGUMENT, "'" + req.name() + "' is not a valid sweep name"};
  }
  auto redis = pool_.Acquire();
  if (!redis.ok()) return ToGrpc(redis.status());
  std::shared_ptr<Sweep> s = Find(req.name());
  bool adopted = false;
  if (s) {
    auto has = HasState(redis->get(), s->id);
    if (!has.ok()) return ToGrpc(has.status());
    if (!*has) {
      absl::Status st = AdoptCached(*s, redis->get(), "its state is gone from Redis; sdfarm adopt");
      if (!st.ok()) return ToGrpc(st);
      adopted = true;
    }
  } else {
    auto a = AdoptFolder(req.name(), redis->get(), "sdfarm adopt", &adopted);
    if (!a.ok()) return ToGrpc(a.status());
    s = *a;
  }
  absl::MutexLock lock(&mu_);
  out->set_sweep_id(s->id);
  out->set_name(s->name);
  out->set_adopted(adopted);
  out->set_images_on_disk(s->done);
  out->set_images_missing(s->total - s->done);
  out->set_output_dir(s->output_dir);
  return grpc::Status::OK;
}

// -------------------------------------------------------------- scheduler --

JobPayload Coordinator::Impl::PayloadFor(const Sweep& s, int64_t job_index) const {
  const JobSlice slice = s.expander->JobAt(job_index);
  JobPayload p;
  p.sweep_id = s.id;
  p.job_index = job_index;
  p.model = s.model;
  p.vae = s.spec.vae;
  p.prompt_chunking = s.spec.prompt_chunking;
  for (int64_t i = slice.first_item; i < slice.first_item + slice.count; ++i) {
    const Item item = s.expander->ItemAt(i);
    if (p.items.empty()) {
      p.width = item.width;
      p.height = item.height;
      p.steps = item.steps;
      p.sampler = item.sampler;
      p.loras = item.loras;
    }
    p.items.push_back(ToJobItem(item, s.expander->FileName(item)));
  }
  return p;
}

absl::Status Coordinator::Impl::FillModel(const std::string& model) {
  ASSIGN_OR_RETURN(auto redis, pool_.Acquire());
  JobQueue q(redis.get(), opt_.key_prefix);
  RETURN_IF_ERROR(q.EnsureGroup(model));
  ASSIGN_OR_RETURN(int64_t length, q.Length(model));
  ASSIGN_OR_RETURN(int64_t pending, q.Pending(model));
  int64_t waiting = length - pending;
  // Sweeps whose enqueue was refused in this pass: the others go on (one
  // sweep's trouble must not stall its model).
  std::set<const Sweep*> refused;
  std::vector<std::shared_ptr<Sweep>> finished_by_skip;
  while (true) {
    std::shared_ptr<Sweep> pick;
    int64_t job_index = 0;
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) return absl::OkStatus();
      const int live = LiveWorkers(model);
      // Few jobs wait in the stream, so a sweep submitted now is served
      // within about one job's time; each sweep holds a bounded window.
      const int64_t target_waiting = std::max(2, live);
      if (waiting >= target_waiting) break;
      const size_t window = static_cast<size_t>(std::max(opt_.window, 2 * live));
      for (auto& [id, s] : sweeps_) {
        if (s->model != model || s->state != State::kRunning || s->next_job >= s->jobs) continue;
        if (s->inflight.size() >= window || s->state_lost || refused.count(s.get())) continue;
        if (!s->storage_problem.empty()) continue;  // its held jobs go first, when storage is retried
        if (!pick || s->pass < pick->pass || (s->pass == pick->pass && s->created_ms < pick->created_ms)) pick = s;
      }
      if (!pick) break;
      job_index = pick->next_job;
    }
    // Jobs whose images are all on disk (an adopted sweep, jobs Redis forgot
    // in a rollback) are marked finished without rendering them.
    int64_t recorded_run = 0;
    {
      absl::MutexLock out_lock(&pick->out_mu);
      if (pick->output) recorded_run = RecordedJobRun(*pick->expander, *pick->output, job_index, 4096);
    }
    absl::StatusOr<RedisReply> r =
        recorded_run > 0
            ? Eval(redis.get(), {"EVAL", kSkipRecordedJobsScript, "1", SweepKey(pick->id), absl::StrCat(job_index),
                                 absl::StrCat(job_index + recorded_run)})
            : Eval(redis.get(), {"EVAL", kEnqueueScript, "3", StreamKey(model), SweepKey(pick->id),
                                 SweepKey(pick->id) + ":inflight", absl::StrCat(job_index),
                                 PayloadFor(*pick, job_index).job_id(), PayloadFor(*pick, job_index).ToJson()});
    if (!r.ok()) return r.status();
    if (r->is_nil()) {
      // The sweep changed state (cancel, pause), or Redis lost or rolled
      // back its state: take Redis's cursor as it is, and go on with the
      // model's other sweeps.
      auto h = redis->Command({"HMGET", SweepKey(pick->id), "spec", "next_job"});
      absl::MutexLock lock(&mu_);
      refused.insert(pick.get());
      int64_t n = 0;
      if (h.ok() && h->array().size() == 2 && h->array()[0].is_nil()) {
        reconcile_soon_ = true;  // its state is gone: the reconciler rebuilds it
      } else if (h.ok() && h->array().size() == 2 && h->array()[1].is_string() &&
                 absl::SimpleAtoi(h->array()[1].str(), &n)) {
        if (n < job_index) NoteRollback(*pick, absl::StrCat("next job ", n, " (was ", job_index, ")"));
        pick->next_job = n;
      }
      continue;
    }
    absl::MutexLock lock(&mu_);
    if (recorded_run > 0) {
      pick->next_job = job_index + recorded_run;
      pick->jobs_done = std::max(pick->jobs_done, r->AsInt().value_or(0));
      finished_by_skip.push_back(pick);
      continue;
    }
    pick->next_job = job_index + 1;
    pick->inflight[job_index] = r->str();
    pick->pass += 1.0 / pick->priority;
    model_vtime_[model] = std::max(model_vtime_[model], pick->pass);
    ++waiting;
    ++model_enqueued_[model];  // wakes the Claims waiting for this model
    changed_.SignalAll();
  }
  for (auto& s : finished_by_skip) MaybeFinish(*s, redis.get());
  return absl::OkStatus();
}

void Coordinator::Impl::LoadMissingSweeps() {
  std::set<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    ids = unloaded_;
  }
  if (ids.empty()) return;
  auto redis = pool_.Acquire();
  if (!redis.ok()) return;
  for (const std::string& id : ids) {
    auto s = LoadSweep(redis->get(), id);
    if (!s.ok() && IsTransient(s.status())) continue;  // next time
    absl::MutexLock lock(&mu_);
    unloaded_.erase(id);
    if (!s.ok()) {
      Log(absl::StrCat("cannot load sweep ", id, ": ", s.status().ToString()));
      continue;
    }
    if (sweeps_.count(id)) continue;
    (*s)->pass = StartPass(**s);
    names_[(*s)->name] = id;
    sweeps_[id] = *s;
    wake_scheduler_ = true;
    Log(absl::StrCat("loaded sweep ", (*s)->name, " (", id, ")", Terminal((*s)->state) ? "" : "; it resumes"));
  }
}

absl::Status Coordinator::Impl::Reconcile(Sweep& s) {
  ASSIGN_OR_RETURN(auto redis, pool_.Acquire());
  int64_t cached_next = 0, cached_done = 0;
  {
    absl::MutexLock lock(&mu_);
    cached_next = s.next_job;
    cached_done = s.jobs_done;
  }
  ASSIGN_OR_RETURN(RedisReply head, redis->Command({"HMGET", SweepKey(s.id), "spec", "next_job", "jobs_done"}));
  if (head.array().size() == 3 && head.array()[0].is_nil()) {
    return AdoptCached(s, redis.get(),
                       "its state is gone from Redis (FLUSHALL, a Redis restart without AOF, or a rollback to before "
                       "the sweep existed)");
  }
  const std::string lease_ms = absl::StrCat(absl::ToInt64Milliseconds(opt_.lease));
  const std::string inflight_key = SweepKey(s.id) + ":inflight";
  ASSIGN_OR_RETURN(RedisReply lost, redis->Command({"EVAL", kFindLostJobsScript, "2", StreamKey(s.model),
                                                    inflight_key, JobQueue::kGroup, lease_ms}));
  bool storage_wait = false;
  {
    absl::MutexLock lock(&mu_);
    storage_wait = !s.storage_problem.empty() && MonotonicNow() < s.storage_retry_at;
  }
  for (const RedisReply& j : lost.array()) {
    if (storage_wait) break;  // held for storage: not before the retry time
    int64_t job_index = 0;
    if (!absl::SimpleAtoi(j.str(), &job_index) || job_index < 0 || job_index >= s.jobs) continue;
    ASSIGN_OR_RETURN(RedisReply old_id, redis->Command({"HGET", inflight_key, j.str()}));
    if (!old_id.is_string()) continue;
    const JobPayload payload = PayloadFor(s, job_index);
    ASSIGN_OR_RETURN(RedisReply r, Eval(redis.get(), {"EVAL", kRequeueLostJobScript, "3", StreamKey(s.model),
                                                   SweepKey(s.id), inflight_key, JobQueue::kGroup, j.str(),
                                                   old_id.str(), payload.job_id(), payload.ToJson(), lease_ms}));
    if (r.is_string()) {
      JobsArrived(s.model);
      Log(absl::StrCat("job ", payload.job_id(), ": its stream entry ", old_id.str(),
                       " was deleted (stream trimmed?) before the job finished; enqueued it again as ", r.str()));
    }
  }
  ASSIGN_OR_RETURN(RedisReply inflight, redis->Command({"HGETALL", inflight_key}));
  ASSIGN_OR_RETURN(RedisReply counts, redis->Command({"HGET", SweepKey(s.id), "jobs_done"}));
  std::map<int64_t, std::string> fresh;
  for (size_t i = 0; i + 1 < inflight.array().size(); i += 2) {
    int64_t j = 0;
    if (absl::SimpleAtoi(inflight.array()[i].str(), &j)) fresh[j] = inflight.array()[i + 1].str();
  }
  int64_t jobs_done = 0;
  if (counts.is_string()) (void)absl::SimpleAtoi(counts.str(), &jobs_done);
  {
    absl::MutexLock lock(&mu_);
    if (Terminal(s.state)) return absl::OkStatus();
    // A job finished or enqueued meanwhile is set right on the next pass.
    if (fresh.size() < s.inflight.size()) wake_scheduler_ = true;
    s.inflight = std::move(fresh);
    // Redis's counters only grow, and the cached ones come from Redis's
    // replies: counters read now below those cached before mean Redis went
    // back to an older state. Its state is then the truth (both ways).
    int64_t redis_next = -1, redis_done = -1;
    if (head.array().size() == 3 && head.array()[1].is_string()) (void)absl::SimpleAtoi(head.array()[1].str(), &redis_next);
    if (head.array().size() == 3 && head.array()[2].is_string()) (void)absl::SimpleAtoi(head.array()[2].str(), &redis_done);
    if ((redis_next >= 0 && redis_next < cached_next) || (redis_done >= 0 && redis_done < cached_done)) {
      NoteRollback(s, absl::StrCat("next job ", redis_next, " (was ", cached_next, "), jobs done ", redis_done, " (was ",
                                   cached_done, ")"));
      if (redis_next >= 0 && redis_next < s.next_job) s.next_job = redis_next;
      s.jobs_done = jobs_done;
    } else {
      s.jobs_done = std::max(s.jobs_done, jobs_done);
    }
  }
  // Repairs noted since the last pass go into the sweep's hash, so that a
  // restarted coordinator still reports them.
  int recoveries = 0;
  bool unsaved = false;
  std::string last_repair;
  {
    absl::MutexLock lock(&mu_);
    recoveries = s.recoveries;
    unsaved = s.recoveries != s.saved_recoveries;
    last_repair = s.last_repair;
  }
  if (unsaved) {
    ASSIGN_OR_RETURN(RedisReply r, Eval(redis.get(), {"EVAL", kNoteRepairScript, "1", SweepKey(s.id),
                                                      absl::StrCat(recoveries), last_repair}));
    absl::MutexLock lock(&mu_);
    if (r.AsInt().value_or(0) == 1) s.saved_recoveries = recoveries;
  }
  MaybeFinish(s, redis.get());
  return absl::OkStatus();
}

void Coordinator::Impl::NoteRollback(Sweep& s, const std::string& what) {
  wake_scheduler_ = true;
  const absl::Time now = MonotonicNow();
  if (now - s.last_rollback < 2 * kReconcileInterval) return;  // the same rollback, seen by another check
  s.last_rollback = now;
  ++s.recoveries;
  s.last_repair = absl::StrCat("repair ", s.recoveries, ": Redis's state of this sweep went back (", what,
                               "): Redis lost acknowledged writes (a crash without appendfsync always, or an older "
                               "copy restored). The jobs it forgot are handed out again; images on disk are kept and "
                               "recorded once");
  Warn(s, s.last_repair);
  Log(absl::StrCat("ERROR: sweep ", s.name, " (", s.id, "): Redis's state went back (", what,
                   "); resynced the coordinator's cache from Redis"));
  wake_scheduler_ = true;
  Changed(s);
}

void Coordinator::Impl::SchedulerLoop() {
  // Monotonic: a wall-clock step back must not stop the reconciler.
  absl::Time last_error_log = absl::InfinitePast();
  absl::Time next_reconcile = MonotonicNow() + kReconcileInterval;
  while (true) {
    bool reconcile_now = false;
    {
      absl::MutexLock lock(&mu_);
      reconcile_now = reconcile_soon_;
      reconcile_soon_ = false;
    }
    if (reconcile_now || MonotonicNow() >= next_reconcile) {
      next_reconcile = MonotonicNow() + kReconcileInterval;
      LoadMissingSweeps();
      std::vector<std::shared_ptr<Sweep>> unfinished;
      {
        absl::MutexLock lock(&mu_);
        if (shutdown_) return;
        // Only sweeps of models a live worker serves: nobody else changes
        // their jobs (a stream trimmed or a state lost meanwhile is repaired
        // once a worker registers), and the many sweeps waiting for a model
        // nobody serves would cost Redis calls every pass. A pass asked for
        // at once (an enqueue was refused: a sweep's state may be lost)
        // checks them all.
        const std::set<std::string> live = LiveModels();
        for (auto& [id, s] : sweeps_) {
          if (!Terminal(s->state) && (reconcile_now || live.count(s->model))) unfinished.push_back(s);
        }
      }
      for (auto& s : unfinished) {
        absl::Status st = Reconcile(*s);
        if (!st.ok() && MonotonicNow() - last_error_log > absl::Seconds(10)) {
          last_error_log = MonotonicNow();
          Log(absl::StrCat("cannot check sweep ", s->name, " against Redis: ", st.ToString(), " (retrying)"));
        }
      }
    }
    std::set<std::string> models;
    {
      absl::MutexLock lock(&mu_);
      // (A relative wait: absl's CondVar timeouts are not wall-clock deadlines.)
      const absl::Time until = MonotonicNow() + absl::Milliseconds(200);
      while (!shutdown_ && !wake_scheduler_ && MonotonicNow() < until) {
        changed_.WaitWithTimeout(&mu_, until - MonotonicNow());
      }
      if (shutdown_) return;
      wake_scheduler_ = false;
      // A model no live worker serves is filled only until its first few
      // jobs wait in the stream (what FillModel targets then), not on every
      // pass: each model costs Redis calls. A worker registering wakes the
      // scheduler.
      const std::set<std::string> live = LiveModels();
      std::map<std::string, std::pair<size_t, bool>> unserved;  // model -> (jobs in flight, jobs left)
      for (auto& [id, s] : sweeps_) {
        if (s->state != State::kRunning) continue;
        if (!live.count(s->model)) {
          auto& [inflight, left] = unserved[s->model];
          inflight += s->inflight.size();
          left = left || s->next_job < s->jobs;
        } else if (s->next_job < s->jobs) {
          models.insert(s->model);
        }
      }
      for (const auto& [model, state] : unserved) {
        if (state.second && state.first < 2) models.insert(model);
      }
    }
    for (const std::string& model : models) {
      absl::Status s = FillModel(model);
      if (!s.ok() && MonotonicNow() - last_error_log > absl::Seconds(10)) {
        last_error_log = MonotonicNow();
        Log(absl::StrCat("cannot queue jobs for model ", model, ": ", s.ToString(), " (retrying)"));
      }
    }
  }
}

// ------------------------------------------------------------ Coordinator --

Coordinator::Coordinator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Coordinator::~Coordinator() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(const CoordinatorOptions& options) {
  if (!options.no_auth) {
    if (options.client_token.empty() || options.worker_token.empty()) {
      return absl::InvalidArgumentError(
          "both a client token and a worker token are required (--client-token, --worker-token or their "
          "SDFARM_* variables); --no-auth runs without them");
    }
    if (options.client_token == options.worker_token) {
      return absl::InvalidArgumentError("the client token and the worker token must differ");
    }
  }
  if (options.max_attempts < 1) return absl::InvalidArgumentError("max attempts must be at least 1");
  if (options.job_size < 1 || options.job_size > 256) return absl::InvalidArgumentError("job size must be in [1, 256]");
  if (options.window < 1) return absl::InvalidArgumentError("window must be at least 1");
  if (options.lease < absl::Seconds(1)) return absl::InvalidArgumentError("the lease must be at least 1 s");
  auto impl = std::make_unique<Impl>(options);
  RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(impl)));
}

grpc::Service* Coordinator::client_service() { return impl_->client_service(); }
grpc::Service* Coordinator::worker_service() { return impl_->worker_service(); }
void Coordinator::Shutdown() { impl_->Shutdown(); }

}  // namespace sdfarm::coordinator
