// What one caller can make the coordinator hold or spend is bounded at the
// edge (coordinator/request_limits.h): oversized heartbeats, registrations
// and telemetry are refused before any work (finding: one 9.5 MB heartbeat
// cost 13 s of CPU), and each client token has quotas on unfinished sweeps,
// sweeps waiting for models nobody serves, and Watch streams, each refused
// with RESOURCE_EXHAUSTED naming its flag.
#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/hostile_worker.h"

namespace sdfarm::testing {
namespace {

namespace pb = sdfarm::v1;
using json = nlohmann::json;

json Spec(const std::string& name, const std::string& model) {
  return {{"name", name},           {"model", model}, {"prompts", {"a red fox"}}, {"seeds", "0-3"},
          {"guidance_scales", {7.5}}, {"steps", 2},   {"sizes", {"64x64"}}};
}

grpc::Status Submit(Farm* farm, const json& spec) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(30));
  pb::SubmitRequest req;
  req.set_spec_json(spec.dump());
  req.set_wait_for_workers(true);
  pb::SubmitResponse resp;
  return farm->client()->Submit(&ctx, req, &resp);
}

TEST(RequestLimits, OversizedHeartbeatsRegistrationsAndTelemetryAreRefusedCheaply) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:1"}));
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(Spec("s", "tiny-sd").dump()));
  // Heartbeats carry evil's session, as a registered worker's do.
  HostileWorker evil(farm->channel(), farm->worker_token());
  pb::RegisterResponse registered;
  ASSERT_TRUE(evil.Register("evil", "tiny-sd", "synthetic", &registered).ok());
  auto stub = pb::WorkerService::NewStub(farm->channel());
  const int pid = farm->coordinator()->pid();

  // 9.5 MB of held jobs in one heartbeat.
  pb::HeartbeatRequest big;
  big.set_worker_id("evil");
  for (int i = 0; i < 300000; ++i) {
    pb::HeldJob* j = big.add_jobs();
    j->set_job_id(absl::StrCat(id, "/", i));
    j->set_stream_id(absl::StrCat("1-", i));
  }
  ASSERT_GT(big.ByteSizeLong(), size_t{19} << 19);  // 9.5 MiB
  const double before = ProcessCpuSeconds(pid);
  pb::HeartbeatResponse resp;
  grpc::Status s = evil.Heartbeat(big, &resp);
  const double cpu = ProcessCpuSeconds(pid) - before;
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("the limit is 65536 bytes"), std::string::npos) << s.error_message();
  // (gRPC parses the 150,000 held jobs before the handler sees them: that
  // parse is what remains; the 13 s of Redis calls per job are gone.)
  EXPECT_LT(cpu, 1.0) << "a 9.5 MB heartbeat cost the coordinator " << cpu << " s of CPU";

  // Small, but listing more jobs than a worker can hold.
  pb::HeartbeatRequest many;
  many.set_worker_id("evil");
  for (int i = 0; i < 17; ++i) many.add_jobs()->set_job_id(absl::StrCat(id, "/", i));
  s = evil.Heartbeat(many, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("17 held jobs; the limit is 16"), std::string::npos) << s.error_message();

  pb::RegisterRequest reg;
  reg.set_worker_id("big");
  reg.mutable_info()->set_model("tiny-sd");
  reg.mutable_info()->set_host(std::string(100 << 10, 'h'));
  grpc::ClientContext ctx3;
  PrepareContext(&ctx3, farm->worker_token(), absl::Seconds(30));
  pb::RegisterResponse reg_resp;
  s = stub->Register(&ctx3, reg, &reg_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("a registration of"), std::string::npos) << s.error_message();

  FARM_ASSERT_OK_AND_ASSIGN(pb::ClaimedJob job, evil.ClaimJob(absl::Seconds(30)));
  pb::JobReport step = HostileWorker::Envelope(job);
  step.mutable_step()->set_step(1);
  step.mutable_step()->set_preview_png(std::string(2 << 20, 'p'));
  pb::ReportAck ack;
  s = evil.Report({step}, &ack);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("a telemetry message of"), std::string::npos) << s.error_message();

  // The honest heartbeat still works.
  pb::HeartbeatRequest ok;
  ok.set_worker_id("evil");
  s = evil.Heartbeat(ok, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
}

TEST(RequestLimits, EachTokenHasQuotasOnSweepsWaitingSweepsAndWatchers) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0,
                                                    .engine = "synthetic:1",
                                                    .coordinator_args = {"--max-unfinished-sweeps-per-token", "3",
                                                                         "--max-waiting-sweeps-per-token", "2",
                                                                         "--max-watchers-per-token", "2"}}));
  // Two sweeps for models nobody serves, then a third is refused.
  EXPECT_TRUE(Submit(farm.get(), Spec("w1", "nobody")).ok());
  EXPECT_TRUE(Submit(farm.get(), Spec("w2", "nobody-else")).ok());
  grpc::Status s = Submit(farm.get(), Spec("w3", "nobody"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("--max-waiting-sweeps-per-token"), std::string::npos) << s.error_message();

  // A served model: one more sweep (3 unfinished), then the total is reached.
  HostileWorker worker(farm->channel(), farm->worker_token());
  pb::RegisterResponse registered;
  ASSERT_TRUE(worker.Register("idle", "tiny-sd", "synthetic", &registered).ok());
  EXPECT_TRUE(Submit(farm.get(), Spec("s1", "tiny-sd")).ok());
  s = Submit(farm.get(), Spec("s2", "tiny-sd"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("3 unfinished sweeps; the limit is 3 per token (--max-unfinished-sweeps-per-token)"),
            std::string::npos)
      << s.error_message();
  EXPECT_TRUE(farm->Status("w1").ok());
  EXPECT_FALSE(farm->Status("s2").ok());
  EXPECT_FALSE(farm->Status("w3").ok());

  // Watchers: two streams, the third refused until one ends.
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<pb::WatchEvent>>> streams;
  std::vector<bool> finished;  // Finish() may be called once per stream
  auto finish = [&](size_t i) {
    grpc::Status st;
    if (!finished[i]) st = streams[i]->Finish();
    finished[i] = true;
    return st;
  };
  auto open = [&]() -> grpc::ClientReader<pb::WatchEvent>* {
    finished.push_back(false);
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    PrepareContext(ctxs.back().get(), farm->client_token(), absl::Seconds(60));
    pb::SweepRef ref;
    ref.set_sweep("w1");
    streams.push_back(farm->client()->Watch(ctxs.back().get(), ref));
    return streams.back().get();
  };
  pb::WatchEvent ev;
  ASSERT_TRUE(open()->Read(&ev));
  ASSERT_TRUE(open()->Read(&ev));
  EXPECT_FALSE(open()->Read(&ev));
  s = finish(2);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("--max-watchers-per-token"), std::string::npos) << s.error_message();
  ctxs[0]->TryCancel();
  (void)finish(0);
  // The slot is free once the coordinator has seen the cancel.
  bool reopened = false;
  for (int attempt = 0; attempt < 50 && !reopened; ++attempt) {
    reopened = open()->Read(&ev);
    if (!reopened) {
      (void)finish(streams.size() - 1);
      absl::SleepFor(absl::Milliseconds(200));
    }
  }
  EXPECT_TRUE(reopened);
  for (auto& c : ctxs) c->TryCancel();
  for (size_t i = 0; i < streams.size(); ++i) (void)finish(i);
}

}  // namespace
}  // namespace sdfarm::testing
