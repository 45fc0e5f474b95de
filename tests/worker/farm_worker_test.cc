// FarmWorker against a real redis-server and an in-test WorkerService (a real
// gRPC server): the job lifecycle of docs/farm.md as a worker lives it.
// The synthetic engine keeps these fast; one test runs the real engine on the
// tiny model and compares the worker's PNGs with sdfarm-render's, byte for
// byte.
#include "worker/farm/farm_worker.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "common/job_payload.h"
#include "common/redis_client.h"
#include "common/subprocess.h"
#include "coordinator/job_queue.h"
#include "tests/common/redis_server_fixture.h"
#include "tests/worker/fake_coordinator.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"
#include "worker/farm/renderer.h"
#include "worker/farm/synthetic_engine.h"

namespace sdfarm::worker {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::sdfarm::v1;
using coordinator::JobQueue;
using ::sdfarm::testing::FakeCoordinator;
using ::sdfarm::testing::RedisServer;

constexpr char kModel[] = "sd15";

JobPayload Job(int64_t index, int items, int steps, const std::string& prompt = "a red fox") {
  JobPayload p;
  p.sweep_id = "s1";
  p.job_index = index;
  p.model = kModel;
  p.width = 64;
  p.height = 32;
  p.steps = steps;
  p.sampler = "euler_a";
  for (int i = 0; i < items; ++i) {
    JobItem it;
    it.index = index * 100 + i;
    it.file_name = absl::StrCat(it.index, ".png");
    it.prompt = prompt;
    it.negative_prompt = "blurry";
    it.seed = static_cast<uint64_t>(1000 + i);
    it.guidance_scale = i % 2 == 0 ? 7.5 : 1.0;
    p.items.push_back(it);
  }
  return p;
}

std::string PngText(const std::string& png, const std::string& key) {
  // ReadPngText wants a file.
  const std::string path = (fs::temp_directory_path() / absl::StrCat("sdfarm-worker-test-", getpid(), ".png"));
  std::ofstream(path, std::ios::binary) << png;
  auto text = engine::ReadPngText(path);
  fs::remove(path);
  if (!text.ok()) return "<" + text.status().ToString() + ">";
  for (const auto& [k, v] : *text) {
    if (k == key) return v;
  }
  return "<no " + key + ">";
}

class FarmWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    redis_server_ = *std::move(server);
    auto client = RedisClient::Connect(redis_server_->client_options());
    ASSERT_TRUE(client.ok()) << client.status();
    redis_ = *std::move(client);
    queue_ = std::make_unique<JobQueue>(redis_.get());
  }

  void TearDown() override {
    if (worker_thread_.joinable()) {
      worker_->Abort();
      worker_thread_.join();
    }
  }

  void StartFake(FakeCoordinator::Config config = {}) {
    config.redis_url = redis_server_->url();
    auto fake = FakeCoordinator::Start(config);
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = *std::move(fake);
  }

  FarmWorkerOptions Options() {
    FarmWorkerOptions o;
    o.coordinator = fake_ ? fake_->address() : "127.0.0.1:1";
    o.worker_id = "w1";
    o.connect_timeout = absl::Seconds(5);
    o.claim_wait = absl::Milliseconds(100);
    o.heartbeat_interval = absl::Milliseconds(100);
    o.min_backoff = absl::Milliseconds(50);
    o.max_backoff = absl::Milliseconds(200);
    o.report_deadline = absl::Seconds(10);
    o.log = [this](const std::string& line) {
      std::fprintf(stderr, "[worker] %s\n", line.c_str());
      absl::MutexLock lock(&log_mu_);
      log_.push_back(line);
    };
    return o;
  }

  void StartWorker(FarmWorkerOptions options, std::unique_ptr<Renderer> renderer) {
    worker_ = std::make_unique<FarmWorker>(std::move(options), std::move(renderer));
    worker_thread_ = std::thread([this] {
      run_status_ = worker_->Run();
      run_done_.Notify();
    });
  }
  void StartWorker(FarmWorkerOptions options, int step_ms = 2) {
    StartWorker(std::move(options), std::make_unique<SyntheticRenderer>(SyntheticOptions{step_ms, kModel}));
  }

  // Drains the worker and waits for Run() to return.
  absl::Status StopWorker(absl::Duration timeout = absl::Seconds(10)) {
    worker_->Drain();
    return JoinWorker(timeout);
  }
  absl::Status JoinWorker(absl::Duration timeout) {
    if (!run_done_.WaitForNotificationWithTimeout(timeout)) {
      return absl::DeadlineExceededError("Run() did not return");
    }
    worker_thread_.join();
    return run_status_;
  }

  std::string Enqueue(const JobPayload& p) {
    auto id = queue_->Enqueue(kModel, p.job_id(), p.ToJson());
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : "";
  }

  bool Logged(const std::string& fragment) {
    absl::MutexLock lock(&log_mu_);
    for (const auto& l : log_) {
      if (absl::StrContains(l, fragment)) return true;
    }
    return false;
  }

  // The completed report stream of a job (done or failed), if any.
  std::optional<FakeCoordinator::Stream> CompletedStream(const std::string& job_id) {
    for (const auto& s : fake_->streams()) {
      if (s.completed && s.messages.back().job_id() == job_id) return s;
    }
    return std::nullopt;
  }
  bool Completed(const std::string& job_id) { return CompletedStream(job_id).has_value(); }

  std::unique_ptr<RedisServer> redis_server_;
  std::unique_ptr<RedisClient> redis_;
  std::unique_ptr<JobQueue> queue_;
  std::unique_ptr<FakeCoordinator> fake_;
  std::unique_ptr<FarmWorker> worker_;
  std::thread worker_thread_;
  absl::Notification run_done_;
  absl::Status run_status_;
  absl::Mutex log_mu_;
  std::vector<std::string> log_ ABSL_GUARDED_BY(log_mu_);
};

TEST_F(FarmWorkerTest, RendersAJobAndReportsEveryImageThenDone) {
  StartFake();
  FarmWorkerOptions o = Options();
  o.batch_size = 2;
  o.previews = 1;
  StartWorker(o);
  const JobPayload job = Job(7, 5, 3);
  const std::string stream_id = Enqueue(job);

  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  const FakeCoordinator::Stream s = *CompletedStream(job.job_id());
  std::vector<int64_t> indices;
  SyntheticRenderer reference({.step_ms = 0, .model_name = kModel});
  for (const v1::JobReport& m : s.messages) {
    EXPECT_EQ(m.worker_id(), "w1");
    EXPECT_EQ(m.job_stream_id(), stream_id);
    EXPECT_EQ(m.job_id(), "s1/7");
    if (!m.has_image()) continue;
    const int64_t k = m.image().item_index() - 700;
    ASSERT_TRUE(k >= 0 && k < 5) << m.image().item_index();
    indices.push_back(m.image().item_index());
    EXPECT_GT(m.image().render_seconds(), 0);
    const JobItem& item = job.items[k];
    const engine::RenderItem ri{item.prompt, item.negative_prompt, item.seed, item.guidance_scale};
    auto decoded = engine::DecodePng(m.image().png(), 3);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(decoded->pixels, SyntheticRenderer::Pattern(ri, 64, 32).pixels) << "item " << k;
    // The negative prompt is written at every CFG scale, as A1111 does.
    EXPECT_EQ(PngText(m.image().png(), "parameters"),
              absl::StrCat("a red fox\nNegative prompt: blurry\n",
                           "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: ",
                           engine::FormatNumber(item.guidance_scale), ", Seed: ", item.seed,
                           ", Size: 64x32, Model hash: synthetic, Model: sd15, Version: sdfarm ", SDFARM_VERSION));
  }
  EXPECT_EQ(indices, (std::vector<int64_t>{700, 701, 702, 703, 704}));
  ASSERT_TRUE(s.messages.back().has_done());
  EXPECT_GT(s.messages.back().done().seconds(), 0);

  // Telemetry counts steps over the whole job (3 batches x 3 steps), ending
  // with the last one, and carries previews.
  std::vector<const v1::StepTelemetry*> steps;
  for (const auto& m : s.messages) {
    if (m.has_step()) steps.push_back(&m.step());
  }
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.back()->step(), 9);
  EXPECT_EQ(steps.back()->total_steps(), 9);
  EXPECT_GT(steps.back()->device_memory_used_bytes(), 0);
  EXPECT_FALSE(steps.front()->preview_png().empty());
  EXPECT_TRUE(engine::DecodePng(steps.front()->preview_png(), 3).ok());

  // The coordinator acknowledged it: the queue is empty.
  EXPECT_EQ(*queue_->Length(kModel), 0);
  ASSERT_TRUE(StopWorker().ok());
  EXPECT_EQ(worker_->stats().jobs_done, 1);
  EXPECT_EQ(worker_->stats().images, 5);

  const auto regs = fake_->registrations();
  ASSERT_EQ(regs.size(), 1u);
  EXPECT_EQ(regs[0].worker_id(), "w1");
  EXPECT_EQ(regs[0].info().model(), kModel);
  EXPECT_EQ(regs[0].info().model_hash(), "synthetic");
  EXPECT_EQ(regs[0].info().batch_size(), 2);
  EXPECT_TRUE(Logged("registered as w1 for model sd15 hash synthetic"));
  EXPECT_TRUE(Logged("claimed job s1/7 (5 items, delivery 1)"));
  EXPECT_TRUE(Logged("job s1/7 done in"));
}

TEST_F(FarmWorkerTest, TelemetryIsRateLimited) {
  StartFake();
  StartWorker(Options(), /*step_ms=*/3);
  const JobPayload job = Job(1, 1, 200);  // ~0.6 s of steps
  Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  const double seconds = CompletedStream(job.job_id())->messages.back().done().seconds();
  const int steps = fake_->steps_seen();
  EXPECT_GE(steps, 2);                                   // the first and the last at least
  EXPECT_LE(steps, static_cast<int>(seconds * 5) + 2);  // ~5/s plus the first and the last
  EXPECT_LT(steps, 200 / 4);
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, HeartbeatsListTheJobBeingRendered) {
  StartFake();
  StartWorker(Options(), /*step_ms=*/5);
  const std::string stream_id = Enqueue(Job(1, 1, 100));
  ASSERT_TRUE(fake_->WaitUntil([&] {
    for (const auto& hb : fake_->heartbeats()) {
      if (hb.jobs_size() == 1 && hb.jobs(0).stream_id() == stream_id && hb.jobs(0).job_id() == "s1/1") return true;
    }
    return false;
  }));
  EXPECT_EQ(fake_->heartbeats().front().worker_id(), "w1");
  EXPECT_GT(fake_->heartbeats().front().device_memory_used_bytes(), 0);
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, TestHookFailsTheJobRetryableWithoutRendering) {
  StartFake();
  FarmWorkerOptions o = Options();
  o.fail_prompt = "explode";
  StartWorker(o);
  const JobPayload job = Job(2, 3, 3, "please explode now");
  Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  const FakeCoordinator::Stream s = *CompletedStream(job.job_id());
  ASSERT_EQ(s.messages.size(), 1u);  // no telemetry, no images
  ASSERT_TRUE(s.messages[0].has_failed());
  EXPECT_TRUE(absl::StartsWith(s.messages[0].failed().error(), "test hook: ")) << s.messages[0].failed().error();
  EXPECT_TRUE(s.messages[0].failed().retryable());
  // Other prompts still render.
  const JobPayload fine = Job(3, 1, 2);
  Enqueue(fine);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(fine.job_id()); }));
  EXPECT_TRUE(CompletedStream(fine.job_id())->messages.back().has_done());
  ASSERT_TRUE(StopWorker().ok());
  EXPECT_EQ(worker_->stats().jobs_failed, 1);
}

TEST_F(FarmWorkerTest, BadPayloadFailsNotRetryable) {
  StartFake();
  StartWorker(Options());
  ASSERT_TRUE(queue_->Enqueue(kModel, "s1/9", "{not json").ok());
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed("s1/9"); }));
  const v1::JobReport last = CompletedStream("s1/9")->messages.back();
  ASSERT_TRUE(last.has_failed());
  EXPECT_FALSE(last.failed().retryable());
  EXPECT_TRUE(absl::StartsWith(last.failed().error(), "bad job payload")) << last.failed().error();
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, InvalidRequestFailsNotRetryableBeforeRendering) {
  StartFake();
  StartWorker(Options());
  JobPayload job = Job(4, 2, 3);
  job.width = 30;  // not a multiple of 8
  Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  const FakeCoordinator::Stream s = *CompletedStream(job.job_id());
  ASSERT_EQ(s.messages.size(), 1u);
  ASSERT_TRUE(s.messages[0].has_failed());
  EXPECT_FALSE(s.messages[0].failed().retryable());
  EXPECT_TRUE(absl::StrContains(s.messages[0].failed().error(), "multiples of 8")) << s.messages[0].failed().error();
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, GivesUpAJobWhoseWorkersWereLostTooOften) {
  StartFake({.lease_ms = 300, .max_attempts = 1});
  const JobPayload job = Job(5, 1, 3);
  Enqueue(job);
  // A worker that took it and died: its lease runs out, this worker reclaims
  // it (delivery 2 > max attempts 1) and gives it up without rendering.
  auto ghost = queue_->Claim(kModel, "ghost", absl::ZeroDuration());
  ASSERT_TRUE(ghost.ok() && ghost->has_value());
  StartWorker(Options());
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  const FakeCoordinator::Stream s = *CompletedStream(job.job_id());
  ASSERT_EQ(s.messages.size(), 1u);
  ASSERT_TRUE(s.messages[0].has_failed());
  EXPECT_FALSE(s.messages[0].failed().retryable());
  EXPECT_EQ(s.messages[0].failed().error(), "given up after 2 deliveries: the workers holding it were lost");
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, ResendsTheWholeReportWhenTheStreamBreaks) {
  StartFake();
  fake_->BreakNextStreams(2);
  FarmWorkerOptions o = Options();
  o.batch_size = 1;
  StartWorker(o);
  const JobPayload job = Job(6, 3, 2);
  Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  const FakeCoordinator::Stream s = *CompletedStream(job.job_id());
  std::vector<int64_t> indices;
  for (const auto& m : s.messages) {
    if (m.has_image()) indices.push_back(m.image().item_index());
  }
  EXPECT_EQ(indices, (std::vector<int64_t>{600, 601, 602}));  // each once, all on the stream that completed
  EXPECT_TRUE(s.messages.back().has_done());
  EXPECT_GE(fake_->streams().size(), 3u);
  EXPECT_EQ(*queue_->Length(kModel), 0);
  ASSERT_TRUE(StopWorker().ok());
  EXPECT_EQ(worker_->stats().jobs_done, 1);
}

TEST_F(FarmWorkerTest, SendsTheReportAgainToARestartedCoordinator) {
  StartFake();
  FarmWorkerOptions o = Options();
  o.batch_size = 1;
  StartWorker(o, /*step_ms=*/5);
  const JobPayload job = Job(16, 2, 60);  // two batches of ~0.3 s
  Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] {
    for (const auto& s : fake_->streams()) {
      for (const auto& m : s.messages) {
        if (m.has_image()) return true;
      }
    }
    return false;
  }));
  // The coordinator goes away mid-job and comes back on the same port.
  const int port = fake_->port();
  fake_.reset();
  absl::SleepFor(absl::Milliseconds(500));
  FakeCoordinator::Config c;
  c.port = port;
  StartFake(c);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  const FakeCoordinator::Stream s = *CompletedStream(job.job_id());
  std::vector<int64_t> indices;
  for (const auto& m : s.messages) {
    if (m.has_image()) indices.push_back(m.image().item_index());
  }
  EXPECT_EQ(indices, (std::vector<int64_t>{1600, 1601}));
  EXPECT_TRUE(s.messages.back().has_done());
  EXPECT_EQ(*queue_->Length(kModel), 0);
  ASSERT_TRUE(StopWorker().ok());
  EXPECT_EQ(worker_->stats().jobs_done, 1);
}

TEST_F(FarmWorkerTest, CancelledSweepStopsTheRenderAndReportsNothingMore) {
  StartFake();
  StartWorker(Options(), /*step_ms=*/5);
  const JobPayload job = Job(8, 1, 1000);  // 5 s if not stopped
  const std::string stream_id = Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return fake_->steps_seen() > 0; }));
  fake_->CancelJob(stream_id);
  ASSERT_TRUE(fake_->WaitUntil([&] { return worker_->stats().jobs_dropped == 1; }, absl::Seconds(3)));
  EXPECT_TRUE(Logged("its sweep was cancelled"));
  EXPECT_FALSE(Completed(job.job_id()));
  // The worker goes on with other jobs.
  const JobPayload next = Job(9, 1, 2);
  Enqueue(next);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(next.job_id()); }));
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, LostLeaseStopsTheRender) {
  StartFake({.lease_ms = 600, .max_attempts = 2});
  StartWorker(Options(), /*step_ms=*/5);
  const JobPayload job = Job(10, 1, 1000);
  const std::string stream_id = Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return fake_->steps_seen() > 0; }));
  // Another worker takes the job over: the next renewal finds it owned by
  // someone else.
  ASSERT_TRUE(redis_->Command({"XCLAIM", queue_->StreamKey(kModel), JobQueue::kGroup, "thief", "0", stream_id}).ok());
  ASSERT_TRUE(fake_->WaitUntil([&] { return worker_->stats().jobs_dropped >= 1; }, absl::Seconds(3)));
  EXPECT_TRUE(Logged("lost lease"));
  for (const auto& r : fake_->FinalReports()) EXPECT_FALSE(r.has_done());
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, DrainFinishesTheCurrentJobAndTakesNoNewOne) {
  StartFake();
  StartWorker(Options(), /*step_ms=*/5);
  const JobPayload first = Job(11, 2, 60);
  Enqueue(first);
  ASSERT_TRUE(fake_->WaitUntil([&] { return fake_->steps_seen() > 0; }));
  worker_->Drain();
  Enqueue(Job(12, 1, 2));
  ASSERT_TRUE(JoinWorker(absl::Seconds(10)).ok());
  ASSERT_TRUE(Completed(first.job_id()));
  EXPECT_TRUE(CompletedStream(first.job_id())->messages.back().has_done());
  EXPECT_EQ(*queue_->Length(kModel), 1);   // the second job waits for another worker
  EXPECT_EQ(*queue_->Pending(kModel), 0);  // and was never claimed
  bool draining_seen = false;
  for (const auto& hb : fake_->heartbeats()) draining_seen = draining_seen || hb.draining();
  EXPECT_TRUE(draining_seen);
  EXPECT_TRUE(Logged("draining"));
}

TEST_F(FarmWorkerTest, AbortDropsTheCurrentJobPromptly) {
  StartFake();
  StartWorker(Options(), /*step_ms=*/5);
  const JobPayload job = Job(13, 1, 1000);  // 5 s if not stopped
  Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return fake_->steps_seen() > 0; }));
  const absl::Time start = absl::Now();
  worker_->Abort();
  ASSERT_TRUE(JoinWorker(absl::Seconds(5)).ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_FALSE(Completed(job.job_id()));
  EXPECT_EQ(*queue_->Pending(kModel), 1);  // still ours until the lease runs out, then redelivered
}

TEST_F(FarmWorkerTest, RegistersAgainWithTheSameIdWhenTheCoordinatorForgetsIt) {
  StartFake();
  StartWorker(Options());
  ASSERT_TRUE(fake_->WaitUntil([&] { return !fake_->heartbeats().empty(); }));
  fake_->ForgetWorkers();
  ASSERT_TRUE(fake_->WaitUntil([&] { return fake_->registrations().size() == 2; }));
  EXPECT_EQ(fake_->registrations()[1].worker_id(), "w1");
  // It shows the session it had (the coordinator may still know it), and
  // from now on every call carries the new one: the fake refuses the old.
  EXPECT_TRUE(fake_->registrations()[0].session().empty());
  EXPECT_EQ(fake_->registrations()[1].session(), "fake-session-1");
  // And keeps working.
  const JobPayload job = Job(14, 1, 2);
  Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, WrongTokenIsFatal) {
  StartFake({.token = "right"});
  FarmWorkerOptions o = Options();
  o.token = "wrong";
  FarmWorker worker(o, std::make_unique<SyntheticRenderer>(SyntheticOptions{0, kModel}));
  const absl::Status s = worker.Run();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "token")) << s;
  EXPECT_TRUE(fake_->registrations().empty());
}

TEST_F(FarmWorkerTest, RightTokenWorks) {
  StartFake({.token = "right"});
  FarmWorkerOptions o = Options();
  o.token = "right";
  StartWorker(o);
  const JobPayload job = Job(15, 1, 2);
  Enqueue(job);
  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }));
  ASSERT_TRUE(StopWorker().ok());
}

TEST_F(FarmWorkerTest, UnreachableCoordinatorIsFatalAfterTheConnectTimeout) {
  FarmWorkerOptions o = Options();  // no fake: 127.0.0.1:1
  o.connect_timeout = absl::Seconds(1);
  FarmWorker worker(o, std::make_unique<SyntheticRenderer>(SyntheticOptions{0, kModel}));
  const absl::Time start = absl::Now();
  const absl::Status s = worker.Run();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST_F(FarmWorkerTest, DrainWhileWaitingForTheCoordinatorExitsCleanly) {
  FarmWorkerOptions o = Options();  // no fake: 127.0.0.1:1
  o.connect_timeout = absl::Seconds(30);
  StartWorker(o);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_TRUE(StopWorker(absl::Seconds(3)).ok());
}

// The farm's acceptance test compares farm PNGs with sdfarm-render's: with the
// real engine, the worker's PNG must carry sdfarm-render's parameters text and
// its pixels.
TEST_F(FarmWorkerTest, RealEngineGivesWhatSdfarmRenderWrites) {
  const std::string model = std::string(SDFARM_SHARED_DIR) + "/models/tiny-sd";
  engine::EngineOptions eo;
  eo.threads = 1;
  auto renderer = LoadEngineRenderer(model, eo, "");
  ASSERT_TRUE(renderer.ok()) << renderer.status().ToString();
  EXPECT_EQ((*renderer)->info().name, "tiny-sd");

  StartFake({.model = "tiny-sd"});
  FarmWorkerOptions o = Options();
  o.batch_size = 2;  // a two-image batch and a one-image batch
  StartWorker(o, std::move(renderer).value());
  JobPayload job;
  job.sweep_id = "real";
  job.job_index = 0;
  job.model = "tiny-sd";
  job.width = job.height = 64;
  job.steps = 3;
  job.sampler = "euler_a";
  job.items = {{0, "0.png", "a red fox", "blurry", 3, 7.5},
               {1, "1.png", "a red fox", "blurry", 4, 7.5},
               {2, "2.png", "an owl", "", 9, 1.0}};
  ASSERT_TRUE(queue_->Enqueue("tiny-sd", job.job_id(), job.ToJson()).ok());

  // sdfarm-render, as a user runs it, for the same items.
  const fs::path out = fs::temp_directory_path() / absl::StrCat("sdfarm-worker-render-", getpid());
  fs::remove_all(out);
  auto render = [&](const std::vector<std::string>& extra, const std::string& dir) {
    SpawnOptions so;
    so.argv = {SDFARM_RENDER_BIN, "--model", model, "--steps", "3", "--sampler", "euler_a", "--width", "64",
               "--height", "64", "--threads", "1", "--quiet", "--out", (out / dir).string()};
    so.argv.insert(so.argv.end(), extra.begin(), extra.end());
    so.log_file = (out.string() + "-" + dir + ".log");
    auto p = Subprocess::Spawn(so);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ((*p)->Wait(absl::Seconds(120)), 0);
  };
  render({"--prompt", "a red fox", "--negative", "blurry", "--seeds", "3,4", "--guidance", "7.5"}, "fox");
  render({"--prompt", "an owl", "--seed", "9", "--guidance", "1"}, "owl");
  auto read = [](const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  const std::vector<std::string> expected = {read(out / "fox" / "0000-seed3-cfg7.5.png"),
                                             read(out / "fox" / "0001-seed4-cfg7.5.png"),
                                             read(out / "owl" / "0000-seed9-cfg1.png")};
  fs::remove_all(out);

  ASSERT_TRUE(fake_->WaitUntil([&] { return Completed(job.job_id()); }, absl::Seconds(120)));
  const FakeCoordinator::Stream s = *CompletedStream(job.job_id());
  ASSERT_TRUE(s.messages.back().has_done());
  int images = 0;
  for (const auto& m : s.messages) {
    if (!m.has_image()) continue;
    ++images;
    const int64_t k = m.image().item_index();
    ASSERT_TRUE(k >= 0 && k < 3);
    ASSERT_FALSE(expected[k].empty()) << "sdfarm-render wrote no image " << k;
    // The same parameters text; the same pixels up to the rounding of batched
    // CPU kernels (the worker renders the fox items as a batch of 2, the
    // reference one at a time; the parity tolerance of 2/255).
    EXPECT_EQ(PngText(m.image().png(), "parameters"), PngText(expected[k], "parameters")) << "item " << k;
    auto got = engine::DecodePng(m.image().png(), 3);
    auto want = engine::DecodePng(expected[k], 3);
    ASSERT_TRUE(got.ok() && want.ok()) << "item " << k;
    ASSERT_EQ(got->pixels.size(), want->pixels.size()) << "item " << k;
    int worst = 0;
    for (size_t i = 0; i < got->pixels.size(); ++i) {
      worst = std::max(worst, std::abs(int{got->pixels[i]} - int{want->pixels[i]}));
    }
    EXPECT_LE(worst, 2) << "item " << k << ": the worker's pixels differ from sdfarm-render's";
  }
  EXPECT_EQ(images, 3);
  ASSERT_TRUE(StopWorker().ok());
}

}  // namespace
}  // namespace sdfarm::worker
