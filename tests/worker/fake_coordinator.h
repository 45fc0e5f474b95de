// A minimal WorkerService for the worker's tests: a real gRPC server on a
// free loopback port that checks the bearer token and the session, hands
// out jobs from a real Redis (Claim: expired, then new, as the coordinator
// does), renews leases on heartbeats, records every Register, Heartbeat and
// ReportJob stream, and acknowledges finished jobs in Redis (AckIfOwner) as
// the real coordinator does. The worker never sees Redis. Tests steer it:
// break report streams, cancel jobs, forget workers.
//
//   FakeCoordinator::Config c;
//   c.redis_url = redis->url();
//   auto fake = FakeCoordinator::Start(c);
//   options.coordinator = (*fake)->address();
//   ...
//   ASSERT_TRUE((*fake)->WaitUntil([&] { return (*fake)->FinalReports().size() == 1; }));
#ifndef SDFARM_TESTS_WORKER_FAKE_COORDINATOR_H_
#define SDFARM_TESTS_WORKER_FAKE_COORDINATOR_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/redis_client.h"
#include "sdfarm.grpc.pb.h"

namespace sdfarm::testing {

class FakeCoordinator final : public sdfarm::v1::WorkerService::Service {
 public:
  struct Config {
    std::string token;  // empty: no auth
    std::string redis_url;  // the fake's own queue (never handed to the worker)
    std::string key_prefix = "sdfarm";
    int64_t lease_ms = 3000;
    int max_attempts = 3;
    int port = 0;                // 0: a free one
    std::string model = "sd15";  // whose queue reports are acknowledged in, until a worker registers
  };

  // One ReportJob call as the coordinator saw it.
  struct Stream {
    std::vector<sdfarm::v1::JobReport> messages;
    bool completed = false;  // ended with done/failed and answered OK
  };

  static absl::StatusOr<std::unique_ptr<FakeCoordinator>> Start(Config config);
  ~FakeCoordinator() override;  // cancels the calls in flight, as a crash would

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }

  // Waits (up to `timeout`) until `pred` holds; it is evaluated whenever
  // anything is recorded, and at least every 20 ms.
  bool WaitUntil(const std::function<bool()>& pred, absl::Duration timeout = absl::Seconds(15));

  std::vector<sdfarm::v1::RegisterRequest> registrations() const;
  std::vector<sdfarm::v1::HeartbeatRequest> heartbeats() const;
  std::vector<Stream> streams() const;
  // The done/failed messages of completed streams, in order.
  std::vector<sdfarm::v1::JobReport> FinalReports() const;
  // Step telemetry received so far (all streams).
  int steps_seen() const;
  // Claim calls that carried the current session.
  int claims() const;

  // The next `n` report streams fail with UNAVAILABLE after their first image.
  void BreakNextStreams(int n);
  // Heartbeats list this job as cancelled from now on.
  void CancelJob(const std::string& stream_id);
  // Heartbeats answer NOT_FOUND until the worker registers again.
  void ForgetWorkers();

  // WorkerService.
  grpc::Status Register(grpc::ServerContext* ctx, const sdfarm::v1::RegisterRequest* req,
                        sdfarm::v1::RegisterResponse* resp) override;
  grpc::Status Claim(grpc::ServerContext* ctx, const sdfarm::v1::ClaimRequest* req,
                     sdfarm::v1::ClaimResponse* resp) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const sdfarm::v1::HeartbeatRequest* req,
                         sdfarm::v1::HeartbeatResponse* resp) override;
  grpc::Status ReportJob(grpc::ServerContext* ctx, grpc::ServerReader<sdfarm::v1::JobReport>* reader,
                         sdfarm::v1::ReportAck* ack) override;

 private:
  explicit FakeCoordinator(Config config) : config_(std::move(config)) {}
  grpc::Status CheckToken(const grpc::ServerContext& ctx) const;
  // The current registration's worker, or NOT_FOUND (no, old or forgotten session).
  grpc::Status CheckSession(const grpc::ServerContext& ctx, std::string* worker) const;
  absl::StatusOr<std::unique_ptr<RedisClient>> Redis() const;
  std::string Model() const;

  const Config config_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  std::vector<sdfarm::v1::RegisterRequest> registrations_ ABSL_GUARDED_BY(mu_);
  std::vector<sdfarm::v1::HeartbeatRequest> heartbeats_ ABSL_GUARDED_BY(mu_);
  std::vector<Stream> streams_ ABSL_GUARDED_BY(mu_);
  int break_streams_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::string> cancelled_ ABSL_GUARDED_BY(mu_);
  bool forgotten_ ABSL_GUARDED_BY(mu_) = false;
  std::string worker_id_ ABSL_GUARDED_BY(mu_), session_ ABSL_GUARDED_BY(mu_);
  int claims_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sdfarm::testing

#endif  // SDFARM_TESTS_WORKER_FAKE_COORDINATOR_H_
