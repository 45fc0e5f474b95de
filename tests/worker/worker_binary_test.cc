// sdfarm-worker as it is deployed: a real process with flags, environment,
// signals and exit codes, against a real redis-server and the in-test
// WorkerService.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_payload.h"
#include "common/redis_client.h"
#include "common/subprocess.h"
#include "coordinator/job_queue.h"
#include "tests/common/redis_server_fixture.h"
#include "tests/worker/fake_coordinator.h"

namespace sdfarm::worker {
namespace {

namespace fs = std::filesystem;
using coordinator::JobQueue;
using ::sdfarm::testing::FakeCoordinator;
using ::sdfarm::testing::RedisServer;

JobPayload Job(int64_t index, int steps, const std::string& prompt = "a red fox") {
  JobPayload p;
  p.sweep_id = "bin";
  p.job_index = index;
  p.model = "sd15";
  p.width = p.height = 64;
  p.steps = steps;
  p.sampler = "euler_a";
  p.items = {{index, "x.png", prompt, "", 1, 7.5}, {index + 1000, "y.png", prompt, "", 2, 7.5}};
  return p;
}

class WorkerBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_ = (fs::temp_directory_path() /
            absl::StrCat("sdfarm-worker-bin-", getpid(), "-",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name(), ".log"))
               .string();
    fs::remove(log_);
  }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "--- worker log:\n%s\n", Log().c_str());
    fs::remove(log_);
  }

  void StartFarm() {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    redis_server_ = *std::move(server);
    auto client = RedisClient::Connect(redis_server_->client_options());
    ASSERT_TRUE(client.ok()) << client.status();
    redis_ = *std::move(client);
    queue_ = std::make_unique<JobQueue>(redis_.get());
    FakeCoordinator::Config c;
    c.token = "worker-secret";
    c.redis_url = redis_server_->url();
    auto fake = FakeCoordinator::Start(c);
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
  }

  std::unique_ptr<Subprocess> Spawn(std::vector<std::string> args,
                                    std::vector<std::pair<std::string, std::string>> env = {}) {
    SpawnOptions o;
    o.argv = {SDFARM_WORKER_BIN};
    o.argv.insert(o.argv.end(), args.begin(), args.end());
    o.env = std::move(env);
    o.env.push_back({"OMP_NUM_THREADS", "1"});
    o.log_file = log_;
    auto p = Subprocess::Spawn(o);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *std::move(p) : nullptr;
  }

  // A synthetic worker for this farm; the token comes from the environment.
  std::unique_ptr<Subprocess> SpawnWorker(int step_ms, std::vector<std::pair<std::string, std::string>> env = {}) {
    env.push_back({"SDFARM_WORKER_TOKEN", "worker-secret"});
    env.push_back({"SDFARM_COORDINATOR", fake_->address()});
    return Spawn({"--engine", absl::StrCat("synthetic:", step_ms), "--model-name", "sd15", "--worker-id", "bin1",
                  "--batch-size", "2", "--connect-timeout", "10"},
                 std::move(env));
  }

  std::string Log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  bool Completed(const std::string& job_id) {
    for (const auto& s : fake_->streams()) {
      if (s.completed && s.messages.back().job_id() == job_id) return true;
    }
    return false;
  }

  std::string log_;
  std::unique_ptr<RedisServer> redis_server_;
  std::unique_ptr<RedisClient> redis_;
  std::unique_ptr<JobQueue> queue_;
  std::unique_ptr<FakeCoordinator> fake_;
};

TEST_F(WorkerBinaryTest, HelpExitsZero) {
  auto p = Spawn({"--help"});
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->Wait(absl::Seconds(30)), 0);
  EXPECT_TRUE(absl::StrContains(Log(), "--engine KIND")) << Log();
}

TEST_F(WorkerBinaryTest, BadFlagsExitTwoWithAHint) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"--batch-size", "0", "--engine", "synthetic:1"},
                                             {"--engine", "warp"},
                                             {"--no-such-flag"},
                                             {}}) {  // no --model
    fs::remove(log_);
    auto p = Spawn(args);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->Wait(absl::Seconds(30)), 2) << Log();
    EXPECT_TRUE(absl::StrContains(Log(), "see --help")) << Log();
  }
}

TEST_F(WorkerBinaryTest, BrokenModelExitsOneBeforeRegistering) {
  StartFarm();
  const fs::path dir = fs::temp_directory_path() / absl::StrCat("sdfarm-broken-model-", getpid());
  fs::create_directories(dir);
  std::ofstream(dir / "model_index.json") << "{ not json";
  auto p = Spawn({"--model", dir.string(), "--coordinator", fake_->address(), "--connect-timeout", "2"});
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->Wait(absl::Seconds(60)), 1);
  fs::remove_all(dir);
  EXPECT_TRUE(absl::StrContains(Log(), "cannot load the model")) << Log();
  EXPECT_TRUE(fake_->registrations().empty());
}

TEST_F(WorkerBinaryTest, UnreachableCoordinatorExitsOne) {
  auto p = Spawn({"--engine", "synthetic:1", "--coordinator", "127.0.0.1:1", "--connect-timeout", "1"});
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->Wait(absl::Seconds(30)), 1);
  EXPECT_TRUE(absl::StrContains(Log(), "unreachable")) << Log();
}

TEST_F(WorkerBinaryTest, WrongTokenExitsOne) {
  StartFarm();
  auto p = Spawn({"--engine", "synthetic:1", "--coordinator", fake_->address(), "--token", "nope"});
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->Wait(absl::Seconds(30)), 1);
  EXPECT_TRUE(absl::StrContains(Log(), "token")) << Log();
}

TEST_F(WorkerBinaryTest, SigtermFinishesAndReportsTheCurrentJobThenExitsZero) {
  StartFarm();
  auto p = SpawnWorker(/*step_ms=*/10);
  ASSERT_NE(p, nullptr);
  const JobPayload job = Job(1, 60);  // ~0.6 s
  ASSERT_TRUE(queue_->Enqueue("sd15", job.job_id(), job.ToJson()).ok());
  ASSERT_TRUE(fake_->WaitUntil([&] { return fake_->steps_seen() > 0; }));
  ASSERT_TRUE(p->Signal(SIGTERM).ok());
  const JobPayload later = Job(2, 1);
  ASSERT_TRUE(queue_->Enqueue("sd15", later.job_id(), later.ToJson()).ok());
  EXPECT_EQ(p->Wait(absl::Seconds(20)), 0);
  EXPECT_TRUE(Completed(job.job_id()));
  EXPECT_FALSE(Completed(later.job_id()));
  EXPECT_EQ(*queue_->Length("sd15"), 1);
  EXPECT_TRUE(absl::StrContains(Log(), "draining")) << Log();
  ASSERT_FALSE(fake_->registrations().empty());
  EXPECT_EQ(fake_->registrations()[0].worker_id(), "bin1");
}

TEST_F(WorkerBinaryTest, SecondSignalExitsZeroAtOnceWithoutReporting) {
  StartFarm();
  auto p = SpawnWorker(/*step_ms=*/20);
  ASSERT_NE(p, nullptr);
  const JobPayload job = Job(1, 1000);  // 20 s
  ASSERT_TRUE(queue_->Enqueue("sd15", job.job_id(), job.ToJson()).ok());
  ASSERT_TRUE(fake_->WaitUntil([&] { return fake_->steps_seen() > 0; }));
  const absl::Time start = absl::Now();
  ASSERT_TRUE(p->Signal(SIGTERM).ok());
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(p->Signal(SIGINT).ok());
  EXPECT_EQ(p->Wait(absl::Seconds(10)), 0);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_FALSE(Completed(job.job_id()));
  EXPECT_EQ(*queue_->Pending("sd15"), 1);  // redelivered once the lease runs out
}

TEST_F(WorkerBinaryTest, RedisUrlFlagIsIgnoredWithAWarningAndNeverShown) {
  // Workers have no Redis access; an old unit file's --redis-url still
  // starts the worker, which says the flag is ignored (without echoing it)
  // and takes its jobs from the coordinator.
  StartFarm();
  auto p = Spawn({"--engine", "synthetic:1", "--model-name", "sd15", "--worker-id", "bin1", "--redis-url",
                  "redis://:hunter2@127.0.0.1:1", "--coordinator", fake_->address(), "--token", "worker-secret"});
  ASSERT_NE(p, nullptr);
  const JobPayload job = Job(1, 2);
  ASSERT_TRUE(queue_->Enqueue("sd15", job.job_id(), job.ToJson()).ok());
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); })) << Log();
  ASSERT_TRUE(fake_->FinalReports().back().has_done());
  ASSERT_TRUE(p->Signal(SIGTERM).ok());
  EXPECT_EQ(p->Wait(absl::Seconds(20)), 0);
  EXPECT_TRUE(absl::StrContains(Log(), "--redis-url is ignored")) << Log();
  EXPECT_FALSE(absl::StrContains(Log(), "hunter2")) << Log();
}

TEST_F(WorkerBinaryTest, TestHookEnvironmentFailsMatchingJobs) {
  StartFarm();
  auto p = SpawnWorker(/*step_ms=*/1, {{"SDFARM_TEST_FAIL_PROMPT", "kaboom"}});
  ASSERT_NE(p, nullptr);
  const JobPayload job = Job(1, 3, "a kaboom");
  ASSERT_TRUE(queue_->Enqueue("sd15", job.job_id(), job.ToJson()).ok());
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  const auto finals = fake_->FinalReports();
  ASSERT_EQ(finals.size(), 1u);
  ASSERT_TRUE(finals[0].has_failed());
  EXPECT_TRUE(finals[0].failed().retryable());
  EXPECT_TRUE(absl::StartsWith(finals[0].failed().error(), "test hook: "));
  ASSERT_TRUE(p->Signal(SIGTERM).ok());
  EXPECT_EQ(p->Wait(absl::Seconds(20)), 0);
}

}  // namespace
}  // namespace sdfarm::worker
