// A dishonest worker for tests: a gRPC client written against the public
// proto alone (WorkerService with the worker token), doing what the protocol
// lets any holder of the worker token try: claim jobs legitimately, then
// report forged images or failures for other jobs, or speak as another
// worker, or send reports built to cost the coordinator (PNG bombs, idle
// streams, oversized telemetry). Used by tests/farm/hostile_worker_test.cc,
// image_checks_test.cc, listener_test.cc, request_limits_test.cc and the
// chaos run.
//
//   HostileWorker mallory(farm->channel(), farm->worker_token());
//   mallory.Register("mallory", "tiny-sd", "synthetic", &reg);
//   mallory.Claim(&claimed);
//   mallory.Report(ForgedReport(claimed.job().stream_id(), other_job_id, "", items, Done()), &ack);
//   ASSERT_OK_AND_ASSIGN(pb::ClaimedJob job, mallory.ClaimJob(absl::Seconds(30)));
//   mallory.Report({HostileWorker::Image(job, item_index, png_bytes)}, &ack);
#ifndef SDFARM_TESTS_FARM_HOSTILE_WORKER_H_
#define SDFARM_TESTS_FARM_HOSTILE_WORKER_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/sweep_expander.h"
#include "sdfarm.grpc.pb.h"

namespace sdfarm::testing {

class HostileWorker {
 public:
  HostileWorker(std::shared_ptr<grpc::Channel> channel, std::string token);

  // Keeps the session it is handed for the calls below.
  grpc::Status Register(const std::string& worker_id, const std::string& model, const std::string& model_hash,
                        sdfarm::v1::RegisterResponse* resp);
  // `session`: send this one instead of its own ("" sends none).
  grpc::Status Claim(sdfarm::v1::ClaimResponse* resp, const std::optional<std::string>& session = std::nullopt,
                     int64_t max_wait_ms = 2000);
  grpc::Status Heartbeat(const sdfarm::v1::HeartbeatRequest& req, sdfarm::v1::HeartbeatResponse* resp);
  // Claims until a job is handed out or `timeout` passes (DEADLINE_EXCEEDED).
  absl::StatusOr<sdfarm::v1::ClaimedJob> ClaimJob(absl::Duration timeout);
  // One ReportJob stream carrying `messages`, then WritesDone and Finish.
  grpc::Status Report(const std::vector<sdfarm::v1::JobReport>& messages, sdfarm::v1::ReportAck* ack,
                      absl::Duration timeout = absl::Seconds(20));
  // Sends `messages`, then nothing (no WritesDone) until the coordinator ends
  // the call or `timeout` passes.
  grpc::Status ReportThenIdle(const std::vector<sdfarm::v1::JobReport>& messages, sdfarm::v1::ReportAck* ack,
                              absl::Duration timeout);

  // A report message about `job` (no worker id: the session says who), and
  // one carrying `png` as the image of `item_index`.
  static sdfarm::v1::JobReport Envelope(const sdfarm::v1::ClaimedJob& job);
  static sdfarm::v1::JobReport Image(const sdfarm::v1::ClaimedJob& job, int64_t item_index, std::string png);

  const std::string& session() const { return session_; }

 private:
  void Prepare(grpc::ClientContext* ctx, const std::string& session, absl::Duration timeout) const;

  std::unique_ptr<sdfarm::v1::WorkerService::Stub> stub_;
  std::string token_, session_;
};

// A white PNG of the item's size whose embedded A1111 parameters match the
// item (seed, CFG scale, steps, size) under a forged prompt: it passes every
// check of the image itself, so only the job binding can refuse it.
std::string ForgedPng(const coordinator::Item& item, const std::string& model);

// A forged report for a job: one white image per item (none if `items` is
// empty), then `last` (done or failed), every message naming `stream_id`,
// `job_id` and `worker_id` ("" leaves it unset).
std::vector<sdfarm::v1::JobReport> ForgedReport(const std::string& stream_id, const std::string& job_id,
                                                const std::string& worker_id,
                                                const std::vector<coordinator::Item>& items, const std::string& model,
                                                const sdfarm::v1::JobReport& last);
sdfarm::v1::JobReport ForgedDone();
sdfarm::v1::JobReport ForgedFailure();  // not retryable: would dead-letter the job

// User + system CPU seconds process `pid` has used so far (/proc/<pid>/stat);
// -1 when it cannot be read. For "refused before it cost anything" checks
// that must not depend on wall-clock timing.
double ProcessCpuSeconds(int pid);

}  // namespace sdfarm::testing

#endif  // SDFARM_TESTS_FARM_HOSTILE_WORKER_H_
