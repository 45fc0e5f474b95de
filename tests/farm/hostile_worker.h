// A worker written against the public proto only, for tests of what the
// coordinator does with dishonest or broken reports: it registers with the
// worker token, takes a job from the model's Redis stream as its own
// consumer (what the real worker does), and sends whatever report a test
// builds.
//
//   FARM_ASSERT_OK_AND_ASSIGN(auto evil, HostileWorker::Register(farm.get(), "evil", "tiny-sd"));
//   FARM_ASSERT_OK_AND_ASSIGN(auto job, evil->ClaimJob(absl::Seconds(20)));
//   ReportResult r = evil->Report(job, {evil->Image(job, item, png_bytes)});
#ifndef SDFARM_TESTS_FARM_HOSTILE_WORKER_H_
#define SDFARM_TESTS_FARM_HOSTILE_WORKER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/redis_client.h"
#include "coordinator/job_queue.h"
#include "sdfarm.grpc.pb.h"
#include "tests/farm/farm_fixture.h"

namespace sdfarm::testing {

struct ReportResult {
  grpc::Status status;
  sdfarm::v1::ReportAck ack;
};

class HostileWorker {
 public:
  // model_hash: what the farm's workers of `model` report ("synthetic" for
  // the synthetic engine); another hash would lock them out of the model.
  static absl::StatusOr<std::unique_ptr<HostileWorker>> Register(Farm* farm, const std::string& worker_id,
                                                                 const std::string& model,
                                                                 const std::string& model_hash = "synthetic");

  // The next job of the model's stream, claimed as this worker (polls until
  // `timeout`).
  absl::StatusOr<coordinator::QueuedJob> ClaimJob(absl::Duration timeout);

  // A report message of `job` carrying an image for `item_index`.
  sdfarm::v1::JobReport Image(const coordinator::QueuedJob& job, int64_t item_index, std::string png) const;
  sdfarm::v1::JobReport Envelope(const coordinator::QueuedJob& job) const;

  // Sends `messages` on one ReportJob stream, then WritesDone and Finish.
  ReportResult Report(const std::vector<sdfarm::v1::JobReport>& messages, absl::Duration timeout = absl::Seconds(30));
  // Sends `messages`, then nothing (no WritesDone) until the coordinator
  // ends the call or `timeout` passes.
  ReportResult ReportThenIdle(const std::vector<sdfarm::v1::JobReport>& messages, absl::Duration timeout);

  const std::string& id() const { return id_; }
  RedisClient* redis() { return redis_.get(); }

 private:
  HostileWorker(Farm* farm, std::string id, std::string model) : farm_(farm), id_(std::move(id)), model_(std::move(model)) {}

  Farm* farm_;
  std::string id_, model_;
  std::unique_ptr<RedisClient> redis_;
  std::unique_ptr<sdfarm::v1::WorkerService::Stub> stub_;
};

// User CPU + system CPU seconds `pid` has used so far (/proc/<pid>/stat); -1
// when it cannot be read.
double ProcessCpuSeconds(int pid);

}  // namespace sdfarm::testing

#endif  // SDFARM_TESTS_FARM_HOSTILE_WORKER_H_
