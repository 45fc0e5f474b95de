// The smaller findings of issue 12, each on real processes: warnings at
// start for an open (--no-auth) or plaintext public listener; reusing a
// submit request id with another spec is refused; the lost-job reconciler
// and worker liveness run on the monotonic clock, so a wall-clock step back
// (an LD_PRELOAD shim steps only the coordinator's clock) does not stop them.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "common/subprocess.h"
#include "coordinator/job_queue.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/hostile_worker.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = sdfarm::v1;
using json = nlohmann::json;

json Spec(const std::string& name, const std::string& seeds) {
  return {{"name", name},           {"model", "tiny-sd"}, {"prompts", {"a red fox"}}, {"seeds", seeds},
          {"guidance_scales", {7.5}}, {"steps", 2},       {"sizes", {"64x64"}}};
}

// Starts a coordinator with `args` on a fresh Redis and returns its log once
// it serves (or after 30 s).
std::string StartupLog(const std::vector<std::string>& args, const std::string& tag) {
  auto redis = RedisServer::Start();
  EXPECT_TRUE(redis.ok()) << redis.status();
  if (!redis.ok()) return "";
  const std::string dir = MakeTempDir(tag);
  SpawnOptions o;
  o.argv = {SDFARM_COORDINATOR_BIN, "--redis-url", (*redis)->url(), "--output-root", dir + "/out", "--port-file",
            dir + "/port"};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.env = {{"SDFARM_CLIENT_TOKEN", "c-token"}, {"SDFARM_WORKER_TOKEN", "w-token"}};
  o.log_file = dir + "/coordinator.log";
  auto p = Subprocess::Spawn(o);
  EXPECT_TRUE(p.ok()) << p.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!fs::exists(dir + "/port") && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
  if (p.ok()) (*p)->Stop(absl::Seconds(10));
  const std::string log = ReadFileOrEmpty(o.log_file);
  std::error_code ec;
  fs::remove_all(dir, ec);
  return log;
}

TEST(SmallFindings, OpenOrPlaintextPublicListenersAreWarnedAbout) {
  std::string log = StartupLog({"--no-auth", "--listen", "0.0.0.0:0"}, "open");
  EXPECT_NE(log.find("WARNING: --no-auth on 0.0.0.0:0, an address other hosts can reach"), std::string::npos) << log;
  log = StartupLog({"--listen", "0.0.0.0:0"}, "plain");
  EXPECT_NE(log.find("WARNING: bearer tokens over plaintext (no --tls-cert) on 0.0.0.0:0"), std::string::npos) << log;
  log = StartupLog({"--listen", "127.0.0.1:0"}, "loopback");
  EXPECT_NE(log.find("serving on port"), std::string::npos) << log;
  EXPECT_EQ(log.find("WARNING: bearer tokens"), std::string::npos) << log;
  EXPECT_EQ(log.find("WARNING: --no-auth"), std::string::npos) << log;
}

TEST(SmallFindings, AReusedRequestIdWithAnotherSpecIsRefused) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:1"}));
  auto submit = [&](const json& spec, pb::SubmitResponse* resp) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, farm->client_token(), absl::Seconds(30));
    pb::SubmitRequest req;
    req.set_spec_json(spec.dump());
    req.set_request_id("request-1");
    req.set_wait_for_workers(true);
    return farm->client()->Submit(&ctx, req, resp);
  };
  pb::SubmitResponse first, retry, other;
  ASSERT_TRUE(submit(Spec("once", "0-3"), &first).ok());
  grpc::Status s = submit(Spec("once", "0-3"), &retry);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(retry.sweep_id(), first.sweep_id());
  s = submit(Spec("once", "0-99"), &other);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("request id 'request-1' already submitted sweep " + first.sweep_id() +
                                   " with another spec"),
            std::string::npos)
      << s.error_message();
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus status, farm->Status("once"));
  EXPECT_EQ(status.total(), 4);
}

TEST(SmallFindings, AWallClockStepBackDoesNotStopTheReconciler) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string dir = MakeTempDir("clock");
  const std::string step_file = dir + "/step-back";
  FARM_ASSERT_OK_AND_ASSIGN(int port, PickFreePort());
  const std::string address = absl::StrCat("127.0.0.1:", port);
  SpawnOptions o;
  o.argv = {SDFARM_COORDINATOR_BIN, "--redis-url", (*redis)->url(), "--output-root", dir + "/out", "--listen",
            address, "--lease", "2"};
  o.env = {{"SDFARM_CLIENT_TOKEN", "c-token"}, {"SDFARM_WORKER_TOKEN", "w-token"},
           {"LD_PRELOAD", SDFARM_CLOCK_STEP_SHIM}, {"SDFARM_TEST_CLOCK_STEP_FILE", step_file}};
  // Under ASan the preloaded shim comes before ASan's runtime: allowed here.
  const char* asan = std::getenv("ASAN_OPTIONS");
  o.env.push_back({"ASAN_OPTIONS", absl::StrCat(asan ? asan : "", asan && *asan ? ":" : "", "verify_asan_link_order=0")});
  o.log_file = dir + "/coordinator.log";
  FARM_ASSERT_OK_AND_ASSIGN(auto coordinator, Subprocess::Spawn(o));
  ASSERT_TRUE(WaitForPort(port, absl::Seconds(30)).ok()) << ReadFileOrEmpty(o.log_file);
  FARM_ASSERT_OK_AND_ASSIGN(auto channel, MakeChannel(address, ""));
  auto client = pb::ClientService::NewStub(channel);
  auto worker = pb::WorkerService::NewStub(channel);
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, "w-token", absl::Seconds(20));
    pb::RegisterRequest req;
    req.set_worker_id("w0");
    req.mutable_info()->set_model("tiny-sd");
    pb::RegisterResponse resp;
    ASSERT_TRUE(worker->Register(&ctx, req, &resp).ok());
  }
  std::string id;
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, "c-token", absl::Seconds(20));
    pb::SubmitRequest req;
    req.set_spec_json(Spec("clock", "0-7").dump());
    pb::SubmitResponse resp;
    grpc::Status s = client->Submit(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    id = resp.sweep_id();
  }
  // The first job enqueued, the coordinator's wall clock goes back an hour,
  // and the job's stream entry is deleted (a trimmed stream).
  FARM_ASSERT_OK_AND_ASSIGN(auto r, RedisClient::Connect((*redis)->client_options()));
  std::string entry;
  for (int i = 0; i < 100 && entry.empty(); ++i) {
    auto h = r->Command({"HGET", "sdfarm:sweep:" + id + ":inflight", "0"});
    if (h.ok() && h->is_string()) entry = h->str();
    if (entry.empty()) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_FALSE(entry.empty()) << ReadFileOrEmpty(o.log_file);
  std::ofstream(step_file) << "1";
  absl::SleepFor(absl::Seconds(3));  // the coordinator's wall clock is an hour back by now
  ASSERT_TRUE(r->Command({"XDEL", "sdfarm:jobs:tiny-sd", entry}).ok());
  // The reconciler (every 2 s) enqueues it again.
  const std::string want = "job " + id + "/0: its stream entry " + entry + " was deleted";
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (ReadFileOrEmpty(o.log_file).find(want) == std::string::npos && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  const std::string log = ReadFileOrEmpty(o.log_file);
  const size_t at = log.find(want);
  ASSERT_NE(at, std::string::npos) << log;
  // The shim did step the coordinator's wall clock: the line is stamped
  // before the first one (ISO 8601 timestamps compare as strings).
  const size_t line = log.rfind('\n', at) + 1;
  EXPECT_LT(log.substr(line, 24), log.substr(0, 24)) << log;
  // The registered worker is still live (no heartbeat needed within 15 s).
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, "c-token", absl::Seconds(20));
    pb::WorkersResponse resp;
    ASSERT_TRUE(client->Workers(&ctx, pb::WorkersRequest(), &resp).ok());
    ASSERT_EQ(resp.workers_size(), 1);
    EXPECT_FALSE(resp.workers(0).lost());
  }
  coordinator->Stop(absl::Seconds(10));
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace sdfarm::testing
