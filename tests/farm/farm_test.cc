// The farm's acceptance tests (issue 4): real redis-server, sdfarm-coordinator,
// sdfarm-worker and sdfarm processes on loopback, the tiny model on CPU.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "sdfarm.grpc.pb.h"
#include "tests/farm/farm_fixture.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = ::sdfarm::v1;
using nlohmann::json;

std::set<std::string> Pngs(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".png") out.insert(e.path().filename().string());
  }
  return out;
}

// Files in the folder that are neither images, the manifest nor the spec
// (temporary files left behind would show up here).
std::vector<std::string> Debris(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.path().extension() != ".png" && n != "metadata.jsonl" && n != "sweep.json") out.push_back(n);
  }
  return out;
}

// The acceptance sweep: 2 prompts x 4 seeds x 3 guidance scales = 24 images.
json AcceptanceSpec(const std::string& name, int steps) {
  return {{"name", name},
          {"model", "tiny-sd"},
          {"prompts", {"a red fox in the snow", "a lighthouse at night"}},
          {"seeds", "0-3"},
          {"guidance_scales", {1, 4, 7.5}},
          {"steps", steps},
          {"samplers", {"euler_a"}},
          {"sizes", {"64x64"}}};
}

// Every image recorded once, on disk, with parameters that match its row.
void ExpectCompleteSweep(const std::string& dir, size_t expected) {
  const std::vector<json> rows = ReadManifest(dir);
  std::set<std::string> names;
  for (const json& r : rows) {
    const std::string name = r["file_name"];
    EXPECT_TRUE(names.insert(name).second) << "duplicate manifest row " << name;
    auto p = engine::ParseA1111Parameters(PngParameters(dir + "/" + name));
    ASSERT_TRUE(p.ok()) << name << ": " << p.status().ToString();
    EXPECT_EQ(p->prompt, r["prompt"].get<std::string>()) << name;
    EXPECT_EQ(p->seed, r["seed"].get<uint64_t>()) << name;
    EXPECT_EQ(p->cfg_scale, r["guidance_scale"].get<double>()) << name;
    EXPECT_EQ(p->steps, r["steps"].get<int>()) << name;
    EXPECT_EQ(r["parameters"].get<std::string>(), PngParameters(dir + "/" + name));
  }
  EXPECT_EQ(rows.size(), expected);
  EXPECT_EQ(names.size(), expected);
  EXPECT_EQ(Pngs(dir), names);
  EXPECT_TRUE(Debris(dir).empty()) << "left in " << dir << ": " << Debris(dir).front();
}

TEST(FarmTest, TwoWorkersRenderTheSweepExactlyAsSdfarmRender) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2}));
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(AcceptanceSpec("accept", 6).dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(4)));
  EXPECT_EQ(st.done(), 24);
  EXPECT_EQ(st.failed(), 0);
  const std::string dir = farm->output_root() + "/accept";
  ExpectCompleteSweep(dir, 24);
  // Both workers took part.
  std::set<std::string> workers;
  for (const json& r : ReadManifest(dir)) workers.insert(r["worker"].get<std::string>());
  EXPECT_EQ(workers.size(), 2u) << farm->Logs();
  // The spec as submitted is kept beside the images.
  EXPECT_TRUE(fs::exists(dir + "/sweep.json"));

  // Pixels and parameter text equal sdfarm-render's for the same parameters.
  const std::string ref_dir = farm->dir() + "/reference";
  for (const std::string prompt : {"a red fox in the snow", "a lighthouse at night"}) {
    for (const std::string g : {"1", "4", "7.5"}) {
      RunResult r = RunProgram({SDFARM_RENDER_BIN, "--model", SharedPath("models/tiny-sd"), "--prompt", prompt,
                                "--seeds", "0-3", "--guidance", g, "--steps", "6", "--sampler", "euler_a", "--width",
                                "64", "--height", "64", "--threads", "1", "--quiet", "--out", ref_dir + "/" + prompt.substr(2, 3) + g},
                               {{"OMP_NUM_THREADS", "1"}}, absl::Minutes(2));
      ASSERT_EQ(r.exit_code, 0) << r.output;
    }
  }
  std::map<std::string, std::string> reference;  // parameters text -> path
  for (const auto& e : fs::recursive_directory_iterator(ref_dir)) {
    if (e.path().extension() == ".png") reference[PngParameters(e.path().string())] = e.path().string();
  }
  ASSERT_EQ(reference.size(), 24u);
  int compared = 0;
  for (const json& row : ReadManifest(dir)) {
    const std::string path = dir + "/" + row["file_name"].get<std::string>();
    auto it = reference.find(PngParameters(path));
    ASSERT_NE(it, reference.end()) << "no sdfarm-render image with the parameters of " << path << ":\n"
                                   << PngParameters(path);
    auto farm_img = engine::ReadPng(path, 3);
    auto ref_img = engine::ReadPng(it->second, 3);
    ASSERT_TRUE(farm_img.ok() && ref_img.ok());
    EXPECT_LE(MaxPixelDifference(*farm_img, *ref_img), kBatchPixelTolerance) << path << " differs from " << it->second;
    ++compared;
  }
  EXPECT_EQ(compared, 24);
}

TEST(FarmTest, AWorkerKilledMidJobLosesNothingAndDuplicatesNothing) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2, .lease_seconds = 3}));
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(AcceptanceSpec("killed", 25).dump()));
  // Wait until a worker is in the middle of a job, then kill it with SIGKILL.
  int victim = -1;
  const absl::Time deadline = absl::Now() + absl::Minutes(2);
  while (victim < 0 && absl::Now() < deadline) {
    auto workers = farm->Workers();
    if (workers.ok()) {
      for (const auto& w : workers->workers()) {
        if (!w.current_job_id().empty() && w.last_step().step() >= 2) victim = w.worker_id()[1] - '0';
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_GE(victim, 0) << "no worker got to step 2 of a job\n" << farm->Logs();
  ASSERT_TRUE(farm->worker(victim)->Signal(SIGKILL).ok());
  ASSERT_TRUE(farm->worker(victim)->Wait(absl::Seconds(10)).has_value());
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(5)));
  EXPECT_EQ(st.done(), 24) << farm->Logs();
  EXPECT_EQ(st.failed(), 0);
  ExpectCompleteSweep(farm->output_root() + "/killed", 24);
}

TEST(FarmTest, CoordinatorRestartMidSweepCompletesAndTheWatcherSeesIt) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2}));
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(AcceptanceSpec("restart", 20).dump()));
  // A real client watches, across the restart.
  SpawnOptions watch;
  watch.argv = {SDFARM_CLIENT_BIN, "watch", id, "--json"};
  watch.env = {{"SDFARM_COORDINATOR", farm->address()}, {"SDFARM_TOKEN", farm->client_token()}};
  watch.log_file = farm->dir() + "/watch.log";
  FARM_ASSERT_OK_AND_ASSIGN(auto watcher, Subprocess::Spawn(watch));

  const absl::Time deadline = absl::Now() + absl::Minutes(2);
  while (absl::Now() < deadline) {
    auto st = farm->Status(id);
    if (st.ok() && st->done() >= 4) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(farm->KillCoordinator().ok());
  absl::SleepFor(absl::Seconds(1));
  ASSERT_TRUE(farm->StartCoordinator().ok()) << farm->Logs();
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(5)));
  EXPECT_EQ(st.done(), 24) << farm->Logs();
  ExpectCompleteSweep(farm->output_root() + "/restart", 24);

  auto code = watcher->Wait(absl::Seconds(30));
  std::ifstream in(watch.log_file);
  std::stringstream out;
  out << in.rdbuf();
  ASSERT_TRUE(code.has_value()) << "the watcher did not finish:\n" << out.str();
  EXPECT_EQ(*code, 0) << out.str();
  EXPECT_NE(out.str().find("DONE"), std::string::npos) << out.str();
}

TEST(FarmTest, NoImageIsWrittenAfterACancelIsAcknowledged) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2}));
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(AcceptanceSpec("cancelled", 30).dump()));
  const absl::Time deadline = absl::Now() + absl::Minutes(2);
  while (absl::Now() < deadline) {
    auto st = farm->Status(id);
    if (st.ok() && st->done() >= 1) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  pb::SweepRef ref;
  ref.set_sweep("cancelled");  // by name
  pb::SweepStatus st;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
  ASSERT_TRUE(farm->client()->Cancel(&ctx, ref, &st).ok());
  EXPECT_EQ(st.state(), pb::CANCELLED);
  const std::string dir = farm->output_root() + "/cancelled";
  const std::set<std::string> at_cancel = Pngs(dir);
  const size_t rows_at_cancel = ReadManifest(dir).size();
  EXPECT_GE(at_cancel.size(), 1u);
  EXPECT_LT(at_cancel.size(), 24u);
  // The workers were mid-job; give them time to finish and report.
  absl::SleepFor(absl::Seconds(4));
  EXPECT_EQ(Pngs(dir), at_cancel);
  EXPECT_EQ(ReadManifest(dir).size(), rows_at_cancel);
  EXPECT_EQ(rows_at_cancel, at_cancel.size());
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus after, farm->Status(id));
  EXPECT_EQ(after.state(), pb::CANCELLED);
  // The workers are free again: a new sweep runs to the end.
  json small = AcceptanceSpec("after-cancel", 2);
  small["seeds"] = "0";
  FARM_ASSERT_OK_AND_ASSIGN(std::string id2, farm->Submit(small.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus done, farm->WaitForState(id2, pb::DONE, absl::Minutes(2)));
  EXPECT_EQ(done.done(), 6);
}

TEST(FarmTest, AJobThatAlwaysFailsIsDeadLetteredAndTheRestCompletes) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2, .job_size = 2,
                                                    .worker_env = {{"SDFARM_TEST_FAIL_PROMPT", "doomed"}}}));
  json spec = {{"name", "dead"},          {"model", "tiny-sd"},       {"prompts", {"a red fox", "a doomed ship"}},
               {"seeds", "0-1"},          {"guidance_scales", {7.5}}, {"steps", 3},
               {"sizes", {"64x64"}}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(3)));
  EXPECT_EQ(st.done(), 2) << farm->Logs();
  EXPECT_EQ(st.failed(), 2);
  const std::string dir = farm->output_root() + "/dead";
  ExpectCompleteSweep(dir, 2);
  for (const json& r : ReadManifest(dir)) EXPECT_EQ(r["prompt"], "a red fox");
  // The dead-letter stream holds the job with the error, after 3 attempts.
  auto redis = RedisClient::Connect(farm->redis()->client_options());
  ASSERT_TRUE(redis.ok());
  auto dead = (*redis)->Command({"XRANGE", "sdfarm:dead:tiny-sd", "-", "+"});
  ASSERT_TRUE(dead.ok());
  ASSERT_EQ(dead->array().size(), 1u);
  const std::string entry = dead->DebugString();
  EXPECT_NE(entry.find("test hook"), std::string::npos) << entry;
  auto failures = (*redis)->Command({"HGETALL", "sdfarm:sweep:" + id + ":failures"});
  ASSERT_TRUE(failures.ok());
  ASSERT_EQ(failures->array().size(), 2u);
  EXPECT_EQ(failures->array()[1].str(), "3");
  // Retried elsewhere: the failing worker leaves the job to the other one
  // first, so its three attempts ran on both workers.
  const std::string log = farm->CoordinatorLog();
  std::set<std::string> tried_on;
  for (const std::string w : {"w0", "w1"}) {
    if (log.find("failed on " + w + " (attempt") != std::string::npos ||
        log.find("dead-lettered after failing on " + w) != std::string::npos) {
      tried_on.insert(w);
    }
  }
  EXPECT_EQ(tried_on.size(), 2u) << log;
  EXPECT_NE(log.find("(attempt 1 of 3)"), std::string::npos) << log;
  EXPECT_NE(log.find("(attempt 2 of 3)"), std::string::npos) << log;
}

TEST(FarmTest, CallsWithoutTheRightTokenAreRejected) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  auto client_call = [&](const std::string& token) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, token, absl::Seconds(10));
    pb::ListResponse resp;
    return farm->client()->List(&ctx, pb::ListRequest(), &resp).error_code();
  };
  EXPECT_EQ(client_call(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(client_call("not-a-token"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(client_call(farm->worker_token()), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(client_call(farm->client_token()), grpc::StatusCode::OK);

  auto worker_stub = pb::WorkerService::NewStub(farm->channel());
  auto register_call = [&](const std::string& token) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, token, absl::Seconds(10));
    pb::RegisterRequest req;
    req.mutable_info()->set_model("tiny-sd");
    req.mutable_info()->set_host("test");
    pb::RegisterResponse resp;
    return worker_stub->Register(&ctx, req, &resp).error_code();
  };
  EXPECT_EQ(register_call(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(register_call(farm->client_token()), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(register_call(farm->worker_token()), grpc::StatusCode::OK);

  // Submit and the streaming calls are guarded too.
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, farm->worker_token(), absl::Seconds(10));
    pb::SubmitRequest req;
    req.set_spec_json(AcceptanceSpec("nope", 2).dump());
    pb::SubmitResponse resp;
    EXPECT_EQ(farm->client()->Submit(&ctx, req, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, "", absl::Seconds(10));
    pb::SweepRef ref;
    ref.set_sweep("x");
    auto reader = farm->client()->Watch(&ctx, ref);
    pb::WatchEvent ev;
    EXPECT_FALSE(reader->Read(&ev));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // Nothing was created by the rejected submit.
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
  pb::ListResponse list;
  ASSERT_TRUE(farm->client()->List(&ctx, pb::ListRequest(), &list).ok());
  EXPECT_EQ(list.sweeps_size(), 0);
}

TEST(FarmTest, SubmitValidatesAndIsIdempotent) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  auto submit = [&](const json& spec, const std::string& request_id, pb::SubmitResponse* resp) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
    pb::SubmitRequest req;
    req.set_spec_json(spec.dump());
    req.set_request_id(request_id);
    req.set_wait_for_workers(true);  // no workers here
    return farm->client()->Submit(&ctx, req, resp);
  };
  pb::SubmitResponse a, b, c;
  ASSERT_TRUE(submit(AcceptanceSpec("same", 2), "r1", &a).ok());
  ASSERT_TRUE(submit(AcceptanceSpec("same", 2), "r1", &b).ok());
  EXPECT_EQ(a.sweep_id(), b.sweep_id());
  EXPECT_EQ(a.images(), 24);
  // Another request for a taken name is refused.
  grpc::Status s = submit(AcceptanceSpec("same", 2), "r2", &c);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  // Names that could leave the output root, and oversized images, are refused.
  for (const std::string name : {"../escape", "/abs", "a/b", ".."}) {
    s = submit(AcceptanceSpec(name, 2), "r-" + name, &c);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
  }
  json big = AcceptanceSpec("big", 2);
  big["sizes"] = {"4096x4096"};
  s = submit(big, "r-big", &c);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("2048"), std::string::npos) << s.error_message();
  // A dry run counts without creating anything.
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
  pb::SubmitRequest req;
  req.set_spec_json(AcceptanceSpec("dry", 2).dump());
  req.set_dry_run(true);
  pb::SubmitResponse dry;
  ASSERT_TRUE(farm->client()->Submit(&ctx, req, &dry).ok());
  EXPECT_EQ(dry.images(), 24);
  EXPECT_EQ(dry.jobs(), 6);
  EXPECT_TRUE(dry.sweep_id().empty());
  EXPECT_FALSE(farm->Status("dry").ok());
}

}  // namespace
}  // namespace sdfarm::testing
