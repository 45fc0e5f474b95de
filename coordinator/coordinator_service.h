// The coordinator: accepts sweeps from clients, feeds their jobs to the Redis
// job streams in bounded windows with a fair share between sweeps, takes the
// workers' reports, writes images and manifests, and acknowledges jobs only
// once their images are on disk. The design and the job lifecycle are in
// docs/farm.md; the wire protocol in proto/sdfarm.proto.
//
//   ASSIGN_OR_RETURN(auto coordinator, Coordinator::Create(options));  // resumes unfinished sweeps
//   grpc::ServerBuilder builder;
//   builder.RegisterService(coordinator->client_service());
//   builder.RegisterService(coordinator->worker_service());
//   auto server = builder.BuildAndStart();
//   ...
//   server->Shutdown(deadline);
//   coordinator->Shutdown();            // ends watch streams, stops the scheduler thread
//
// All durable state is in Redis (sweep hashes, in-flight job maps, failure
// counts) and on disk (images, metadata.jsonl); the process itself holds
// only caches of it and the workers' liveness, so it can be killed at any
// point and restarted. Worker registrations are in memory: workers register
// again when a heartbeat answers NOT_FOUND. Workers have no Redis access:
// they claim jobs (Claim) and renew leases (Heartbeat) through the
// coordinator, each call tied to the worker by its registration's session
// secret (coordinator/worker_sessions.h, coordinator/job_binding.h).
//
// Threads: gRPC's sync-server pool runs the handlers; one scheduler thread
// (owned here, stopped by Shutdown) refills the job streams. Redis
// connections come from a pool, one per concurrent handler.
#ifndef SDFARM_COORDINATOR_COORDINATOR_SERVICE_H_
#define SDFARM_COORDINATOR_COORDINATOR_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/redis_client.h"
#include "coordinator/request_limits.h"
#include "coordinator/sweep_spec.h"

namespace sdfarm::coordinator {

struct CoordinatorOptions {
  RedisOptions redis;
  std::string output_root = "sdfarm-out";
  std::string client_token, worker_token;
  bool no_auth = false;          // accept calls without tokens (tests, trusted loopback)
  absl::Duration lease = absl::Seconds(60);
  int max_attempts = 3;
  int job_size = 4;              // items per job
  int window = 8;                // jobs of one sweep in Redis at once
  std::string key_prefix = "sdfarm";
  SweepLimits limits;
  int max_watchers = 1000;       // concurrent Watch streams
  absl::Duration heartbeat_timeout = absl::Seconds(15);  // a worker silent this long is not live
  // At start-up, pause every unfinished sweep and take all its jobs out of
  // the queues (sdfarm local: no worker of an earlier run is alive, and a run
  // serves only the sweep it was asked for).
  bool hold_unfinished = false;
  // The leader lease in Redis (leader_lease.h): renewed every third of it; a
  // restarted coordinator waits up to this long for a killed one's lease.
  absl::Duration leader_lease = absl::Seconds(10);
  // Called when another coordinator turns out to hold the lease; default:
  // log and exit the process with kExitLostLeadership.
  std::function<void(const std::string&)> on_lost_leadership;
  // A ReportJob stream that sends nothing for this long is cancelled (it
  // holds a handler thread and a Redis connection while open).
  absl::Duration report_idle_timeout = absl::Minutes(5);
  TokenLimits token_limits;  // per client token (request_limits.h)
};

// The coordinator's exit status when it finds another coordinator holding
// the farm's leader lease while it runs.
inline constexpr int kExitLostLeadership = 3;

class Coordinator {
 public:
  // Locks the output root (output_root_lock.h), connects to Redis, takes the
  // farm's leader lease (leader_lease.h; waits for a killed coordinator's to
  // end), warns when Redis may evict keys or lose writes, and loads every
  // sweep (unfinished ones resume). FailedPrecondition naming the other
  // coordinator when one holds the root or the lease.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& options);
  ~Coordinator();  // Shutdown()

  grpc::Service* client_service();
  grpc::Service* worker_service();

  // Ends Watch streams, stops the scheduler thread. Idempotent.
  void Shutdown();

  class Impl;

 private:
  explicit Coordinator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_COORDINATOR_SERVICE_H_
