// One coordinator per farm: a leader lease in Redis that every state-changing
// script of the coordinator checks, so a second coordinator (another host,
// another output root, the same Redis and key prefix) can never write the
// farm's state, and a restarted coordinator takes over only once the old one
// is gone.
//
//   LeaderLeaseOptions o{.redis = redis_options, .key = "sdfarm:leader", .ttl = absl::Seconds(10)};
//   o.on_lost = [](const std::string& why) { log(why); std::_Exit(3); };
//   ASSIGN_OR_RETURN(auto lease, LeaderLease::Acquire(o));   // may wait up to ttl + margin
//   // every state-changing script goes through the lease:
//   ASSIGN_OR_RETURN(RedisReply r, lease->Eval(redis, {"EVAL", kScript, "2", k1, k2, a1, a2}));
//
// The key <prefix>:leader holds "<random instance id> host=H pid=P since=T",
// set with SET NX PX ttl and renewed every ttl/3 by a thread this object owns
// (steady clock, compare-and-extend script). Eval appends the leader key to
// KEYS and the value and ttl to ARGV, and prefixes the script with a guard
// that, before anything else:
//   - returns the error "SDFARM_NOT_LEADER <key> is held by <other>" when
//     another instance holds the lease: Eval then calls on_lost (the
//     coordinator logs loudly and exits non-zero rather than keep writing);
//   - takes the key again when it is missing (FLUSHALL, a Redis restart
//     without AOF, a rollback, or this instance stalled past its ttl while no
//     one else took over) so that losing Redis's state does not stop the farm;
//   - then runs the script with KEYS and ARGV as the caller wrote them (the
//     guard's extra entries are cut off), so scripts need no change.
// At start, a lease held by another instance is waited for up to ttl + margin
// (a coordinator killed with kill -9 holds it until its ttl runs out); a
// lease still held then (its holder renews it: it is alive) is refused with a
// message naming the holder. Release (and the destructor) deletes the key if
// it is still this instance's, so a cleanly stopped coordinator is replaced
// at once.
#ifndef SDFARM_COORDINATOR_LEADER_LEASE_H_
#define SDFARM_COORDINATOR_LEADER_LEASE_H_

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/redis_client.h"

namespace sdfarm::coordinator {

struct LeaderLeaseOptions {
  RedisOptions redis;
  std::string key = "sdfarm:leader";
  absl::Duration ttl = absl::Seconds(10);
  // Added to ttl for the start-up wait (clock granularity, a slow last renewal).
  absl::Duration start_margin = absl::Seconds(2);
  std::function<void(const std::string&)> log;      // one line; default: none
  // Called (once) when another instance turns out to hold the lease. The
  // coordinator exits from it; if it returns, Eval answers FailedPrecondition.
  std::function<void(const std::string&)> on_lost;
};

class LeaderLease {
 public:
  // Waits for another instance's lease (up to ttl + margin), takes the lease
  // and starts renewing it. FailedPrecondition naming the holder when it
  // stays held; Unavailable/DeadlineExceeded when Redis cannot be reached.
  static absl::StatusOr<std::unique_ptr<LeaderLease>> Acquire(LeaderLeaseOptions options);
  ~LeaderLease();  // Release()
  LeaderLease(const LeaderLease&) = delete;
  LeaderLease& operator=(const LeaderLease&) = delete;

  // Stops the renewal thread and deletes the key if it is still ours. Idempotent.
  void Release();

  // Runs `argv` ({"EVAL", script, numkeys, keys..., args...}) guarded by the
  // lease (see above). FailedPrecondition (after on_lost) when another
  // instance holds it.
  absl::StatusOr<RedisReply> Eval(RedisClient* redis, std::vector<std::string> argv);

  const std::string& key() const { return options_.key; }
  const std::string& value() const { return value_; }
  bool lost() const;

 private:
  explicit LeaderLease(LeaderLeaseOptions options);
  void RenewLoop();
  void Lost(const std::string& why);
  void Log(const std::string& line) const {
    if (options_.log) options_.log(line);
  }

  const LeaderLeaseOptions options_;
  std::string value_;
  std::unique_ptr<RedisClient> client_;  // the renewal thread's own connection
  // std:: rather than absl:: so that the renewal wait runs on the steady
  // clock (a wall-clock step must not delay a renewal past the ttl).
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;  // guarded by mu_
  bool lost_ = false;  // guarded by mu_
  std::thread renewer_;
};

// True for the error Eval returns when another instance holds the lease.
bool IsNotLeaderError(const absl::Status& s);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_LEADER_LEASE_H_
