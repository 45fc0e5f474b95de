// The coordinator's leader lease in Redis (see leader_lease.h).
#include "coordinator/leader_lease.h"

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log_time.h"
#include "common/status_macros.h"

namespace sdfarm::coordinator {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr char kNotLeader[] = "SDFARM_NOT_LEADER";

// Prefixed to every guarded script. The last KEYS entry is the leader key,
// the last two ARGV entries this instance's value and the ttl in ms; the
// script proper sees KEYS and ARGV without them.
constexpr char kGuard[] = R"lua(
local sdfarm_leader_key = KEYS[#KEYS]
local sdfarm_leader_holder = redis.call('GET', sdfarm_leader_key)
if not sdfarm_leader_holder then
  redis.call('SET', sdfarm_leader_key, ARGV[#ARGV - 1], 'PX', ARGV[#ARGV])
elseif sdfarm_leader_holder ~= ARGV[#ARGV - 1] then
  return redis.error_reply('SDFARM_NOT_LEADER ' .. sdfarm_leader_key .. ' is held by ' .. sdfarm_leader_holder)
end
local KEYS = {unpack(KEYS, 1, #KEYS - 1)}
local ARGV = {unpack(ARGV, 1, #ARGV - 2)}
)lua";

// KEYS: leader key. ARGV: value, ttl ms. 1 renewed, 2 taken again (the key
// was gone), or the other holder's value.
constexpr char kRenewScript[] = R"lua(
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return v
)lua";

// KEYS: leader key. ARGV: value. Deletes the key if it is still ours.
constexpr char kReleaseScript[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
)lua";

std::string RandomId() {
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
}

std::string Seconds(absl::Duration d) { return absl::StrCat(absl::ToDoubleSeconds(d), " s"); }

}  // namespace

bool IsNotLeaderError(const absl::Status& s) { return !s.ok() && absl::StrContains(s.message(), kNotLeader); }

LeaderLease::LeaderLease(LeaderLeaseOptions options) : options_(std::move(options)) {
  char host[256] = {0};
  (void)::gethostname(host, sizeof(host) - 1);
  value_ = absl::StrCat(RandomId(), " host=", host, " pid=", ::getpid(), " since=", LogTimestamp());
}

absl::StatusOr<std::unique_ptr<LeaderLease>> LeaderLease::Acquire(LeaderLeaseOptions options) {
  std::unique_ptr<LeaderLease> lease(new LeaderLease(std::move(options)));
  const LeaderLeaseOptions& o = lease->options_;
  RedisOptions ro = o.redis;
  ro.command_timeout = std::min(ro.command_timeout, std::max(absl::Milliseconds(500), o.ttl / 3));
  ASSIGN_OR_RETURN(lease->client_, RedisClient::Connect(ro));
  const std::string ttl_ms = absl::StrCat(absl::ToInt64Milliseconds(o.ttl));
  const auto deadline = SteadyClock::now() + absl::ToChronoNanoseconds(o.ttl + o.start_margin);
  // A broken connection is retried for a while (the SET may have run and
  // its reply been lost: the key then holds our own value).
  const auto give_up = deadline + std::chrono::seconds(30);
  auto transient = [&](const absl::Status& s) {
    return (s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded) &&
           SteadyClock::now() < give_up;
  };
  std::string waited_for;
  while (true) {
    auto set = lease->client_->Command({"SET", o.key, lease->value_, "NX", "PX", ttl_ms});
    auto holder = set.ok() && set->is_nil() ? lease->client_->Command({"GET", o.key}) : set;
    if (!holder.ok()) {
      if (!transient(holder.status())) return holder.status();
      absl::SleepFor(absl::Milliseconds(200));
      continue;
    }
    if (!set->is_nil()) break;  // OK: ours
    if (holder->is_nil()) continue;  // it ended just now
    if (holder->str() == lease->value_) break;  // our SET ran; its reply was lost
    if (waited_for.empty()) {
      waited_for = holder->str();
      lease->Log(absl::StrCat("another coordinator holds the leader lease ", o.key, " in Redis (", waited_for,
                              "): waiting up to ", Seconds(o.ttl + o.start_margin),
                              " for it to end (a coordinator that was killed holds it until its lease runs out)"));
    }
    if (SteadyClock::now() >= deadline) {
      return absl::FailedPreconditionError(absl::StrCat(
          "another coordinator is running with this Redis and key prefix: ", holder->str(), " holds the leader lease ",
          o.key, " and keeps renewing it (waited ", Seconds(o.ttl + o.start_margin),
          "). One coordinator per farm: stop it first, or give this one another Redis or --key-prefix"));
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  if (!waited_for.empty()) lease->Log(absl::StrCat("the leader lease ", o.key, " ended; this coordinator took it"));
  lease->renewer_ = std::thread([l = lease.get()] { l->RenewLoop(); });
  return lease;
}

LeaderLease::~LeaderLease() { Release(); }

void LeaderLease::Release() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  wake_.notify_all();
  if (renewer_.joinable()) renewer_.join();
  if (client_ && !lost()) (void)client_->Command({"EVAL", kReleaseScript, "1", options_.key, value_});
}

bool LeaderLease::lost() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lost_;
}

void LeaderLease::Lost(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (lost_) return;
    lost_ = true;
  }
  if (options_.on_lost) options_.on_lost(why);
}

void LeaderLease::RenewLoop() {
  const std::string ttl_ms = absl::StrCat(absl::ToInt64Milliseconds(options_.ttl));
  const auto period = absl::ToChronoNanoseconds(options_.ttl / 3);
  auto next = SteadyClock::now() + period;
  auto last_renewed = SteadyClock::now();
  auto last_complaint = SteadyClock::time_point();
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_until(lock, next, [&] { return stop_; });
      if (stop_) return;
    }
    auto r = client_->Command({"EVAL", kRenewScript, "1", options_.key, value_, ttl_ms});
    const auto now = SteadyClock::now();
    if (!r.ok()) {
      // Redis unreachable: try again soon. The guard in every script keeps a
      // stale leader from writing if another instance takes over meanwhile.
      if (now - last_complaint > std::chrono::seconds(10)) {
        last_complaint = now;
        Log(absl::StrCat("cannot renew the leader lease ", options_.key, ": ", r.status().ToString(),
                         " (last renewed ", std::chrono::duration<double>(now - last_renewed).count(),
                         " s ago; retrying)"));
      }
      next = now + std::min<SteadyClock::duration>(period, std::chrono::milliseconds(500));
      continue;
    }
    if (r->is_string()) {
      Lost(absl::StrCat("the leader lease ", options_.key, " is held by another coordinator (", r->str(),
                        "); this one (", value_, ") must not write the farm's state any more"));
      return;
    }
    if (r->AsInt().value_or(0) == 2) {
      Log(absl::StrCat("WARNING: the leader lease ", options_.key,
                       " had vanished from Redis (FLUSHALL, a Redis restart without AOF, a rollback, or a renewal "
                       "late by more than the lease); took it again"));
    }
    last_renewed = now;
    next = now + period;
  }
}

absl::StatusOr<RedisReply> LeaderLease::Eval(RedisClient* redis, std::vector<std::string> argv) {
  int64_t numkeys = 0;
  if (argv.size() < 3 || argv[0] != "EVAL" || !absl::SimpleAtoi(argv[2], &numkeys) || numkeys < 0 ||
      static_cast<size_t>(numkeys) + 3 > argv.size()) {
    return absl::InternalError("LeaderLease::Eval needs {\"EVAL\", script, numkeys, keys..., args...}");
  }
  argv[1] = kGuard + argv[1];
  argv[2] = absl::StrCat(numkeys + 1);
  argv.insert(argv.begin() + 3 + numkeys, options_.key);
  argv.push_back(value_);
  argv.push_back(absl::StrCat(absl::ToInt64Milliseconds(options_.ttl)));
  auto r = redis->Command(argv);
  if (IsNotLeaderError(r.status())) {
    Lost(std::string(r.status().message()));
    return absl::FailedPreconditionError(r.status().message());
  }
  return r;
}

}  // namespace sdfarm::coordinator
