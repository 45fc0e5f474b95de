// The farm's one Redis key schema: every key the job queue (and the sweep
// state it changes in the same atomic step) lives under, named once. The
// names are exactly those the coordinator has always used, so existing data
// stays valid.
//
//   KeySchema keys("sdfarm");
//   keys.Stream("sd15");          // "sdfarm:jobs:sd15"   (consumer group "workers")
//   keys.InFlight("a1b2");        // "sdfarm:sweep:a1b2:inflight"
//
// Layout (docs/farm.md, "Redis"):
//   <prefix>:jobs:<model>             stream of jobs (fields job, payload), group kGroup
//   <prefix>:dead:<model>             dead letters (job, payload, stream_id, deliveries, error)
//   <prefix>:sweeps                   zset sweep id -> created ms
//   <prefix>:sweep:<id>               sweep hash (spec, state, next_job, jobs_done, ...)
//   <prefix>:sweep:<id>:inflight      hash job index -> stream id of its live delivery
//   <prefix>:sweep:<id>:failures      hash job index -> failed attempts
//   <prefix>:sweep:<id>:failed        hash item index -> error (dead-lettered items)
//   <prefix>:request:<request id>     -> sweep id
//   <prefix>:name:<name>              -> sweep id
//   <prefix>:leader                   the coordinator's leader lease
#ifndef SDFARM_QUEUE_KEYS_H_
#define SDFARM_QUEUE_KEYS_H_

#include <string>
#include <utility>

namespace sdfarm::queue {

// The consumer group of every job stream; workers are its consumers (by worker id).
inline constexpr char kGroup[] = "workers";
// The consumer a failed delivery is handed to while it waits for another
// worker to reclaim it (never a worker id: those are "<host>-<pid>" or chosen).
inline constexpr char kReleasedConsumer[] = "sdfarm-released";

class KeySchema {
 public:
  explicit KeySchema(std::string prefix = "sdfarm") : prefix_(std::move(prefix)) {}

  const std::string& prefix() const { return prefix_; }
  std::string Stream(const std::string& model) const;
  std::string DeadLetters(const std::string& model) const;
  std::string Sweeps() const;
  // "<prefix>:sweep:": what Sweep(id) appends the id to.
  std::string SweepPrefix() const;
  std::string Sweep(const std::string& id) const;
  std::string InFlight(const std::string& id) const;
  std::string Failures(const std::string& id) const;
  std::string FailedItems(const std::string& id) const;
  std::string Request(const std::string& request_id) const;
  std::string Name(const std::string& name) const;
  std::string Leader() const;

 private:
  std::string prefix_;
};

}  // namespace sdfarm::queue

#endif  // SDFARM_QUEUE_KEYS_H_
