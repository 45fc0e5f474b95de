// Redis losing or rolling back the farm's state (issue 12): FLUSHALL mid-sweep,
// Redis restarted from an older copy of its data, a coordinator restarted
// after a FLUSHALL, a folder whose state is gone adopted by hand. Each is
// reported (status warnings, recoveries, the log) and repaired: the sweep
// completes with every image exactly once, the images on disk kept.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_output.h"
#include "coordinator/sweep_spec.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/sweep_check.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = ::sdfarm::v1;
using nlohmann::json;

constexpr int kJobSize = 2;

json Spec(const std::string& name, int seeds) {
  return {{"name", name},          {"model", "tiny-sd"},         {"prompts", {"a lighthouse in the fog"}},
          {"seeds", absl::StrCat("0-", seeds - 1)}, {"guidance_scales", {7.5}}, {"steps", 4},
          {"samplers", {"euler_a"}}, {"sizes", {"64x64"}}};
}

coordinator::SweepExpander Expander(const json& spec) {
  auto parsed = coordinator::SweepSpec::FromJson(spec, coordinator::SweepLimits{}, 0);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return coordinator::SweepExpander(*parsed, kJobSize);
}

SweepFolderCheck CheckFolder(Farm& farm, const json& spec) {
  return CheckSweepFolder(farm.output_root() + "/" + spec["name"].get<std::string>(), Expander(spec), "tiny-sd");
}

// Waits until the sweep has at least `done` images (the coordinator may restart meanwhile).
bool WaitForDone(Farm& farm, const std::string& sweep, int64_t done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto st = farm.Status(sweep);
    if (st.ok() && st->done() >= done) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

std::string Warnings(const pb::SweepStatus& st) { return absl::StrJoin(st.warnings(), "\n"); }

std::unique_ptr<RedisClient> Connect(Farm& farm) {
  auto r = RedisClient::Connect(farm.redis()->client_options());
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::move(*r) : nullptr;
}

TEST(RedisLossTest, FlushallMidSweepIsReportedAndRepaired) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2, .engine = "synthetic:20", .job_size = kJobSize}));
  const json spec = Spec("flushed", 60);
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  ASSERT_TRUE(WaitForDone(*farm, id, 12, absl::Seconds(60))) << farm->Logs();
  auto redis = Connect(*farm);
  ASSERT_TRUE(redis);
  ASSERT_TRUE(redis->Command({"FLUSHALL"}).ok());

  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Seconds(120)));
  EXPECT_EQ(st.done(), 60);
  EXPECT_EQ(st.failed(), 0);
  EXPECT_FALSE(st.state_lost());
  EXPECT_GE(st.recoveries(), 1);
  EXPECT_TRUE(absl::StrContains(Warnings(st), "its state is gone from Redis")) << Warnings(st);
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "ERROR: sweep flushed")) << farm->CoordinatorLog();
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "rebuilt in Redis from")) << farm->CoordinatorLog();
  const SweepFolderCheck check = CheckFolder(*farm, spec);
  EXPECT_TRUE(check.ok()) << check.Summary();
  // Redis holds the sweep again, done.
  auto state = redis->Command({"HGET", "sdfarm:sweep:" + id, "state"});
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->str(), "done");
}

TEST(RedisLossTest, ARollbackMidSweepIsReportedAndRepaired) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2, .engine = "synthetic:20", .job_size = kJobSize}));
  const json spec = Spec("rolled-back", 60);
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  ASSERT_TRUE(WaitForDone(*farm, id, 6, absl::Seconds(60))) << farm->Logs();
  // A copy of Redis's data early in the sweep (what a backup, or the AOF
  // without its last second, holds)...
  const std::string copy = farm->dir() + "/redis-copy";
  std::error_code ec;
  fs::copy(farm->redis()->data_dir(), copy, fs::copy_options::recursive, ec);
  ASSERT_FALSE(ec) << ec.message();
  // ... the sweep goes on ...
  ASSERT_TRUE(WaitForDone(*farm, id, 30, absl::Seconds(60))) << farm->Logs();
  // ... and Redis comes back from the copy.
  ASSERT_TRUE(farm->redis()->Kill().ok());
  for (const auto& e : fs::directory_iterator(farm->redis()->data_dir())) fs::remove_all(e.path(), ec);
  fs::copy(copy, farm->redis()->data_dir(), fs::copy_options::recursive | fs::copy_options::overwrite_existing, ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_TRUE(farm->redis()->Restart().ok());

  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Seconds(120)));
  EXPECT_EQ(st.done(), 60);
  EXPECT_EQ(st.failed(), 0);
  EXPECT_GE(st.recoveries(), 1);
  EXPECT_TRUE(absl::StrContains(Warnings(st), "went back")) << Warnings(st) << "\n" << farm->CoordinatorLog();
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "Redis's state went back")) << farm->CoordinatorLog();
  const SweepFolderCheck check = CheckFolder(*farm, spec);
  EXPECT_TRUE(check.ok()) << check.Summary();
  // The repair is kept in Redis: a restarted coordinator still reports it.
  ASSERT_TRUE(farm->StopCoordinator().ok());
  ASSERT_TRUE(farm->StartCoordinator().ok()) << farm->Logs();
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus after, farm->Status(id));
  EXPECT_EQ(after.recoveries(), st.recoveries());
  EXPECT_TRUE(absl::StrContains(Warnings(after), "went back")) << Warnings(after);
}

TEST(RedisLossTest, ACoordinatorRestartedAfterAFlushallAdoptsTheSweepFromItsFolder) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2, .engine = "synthetic:20", .job_size = kJobSize}));
  const json spec = Spec("adopted-at-start", 40);
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  ASSERT_TRUE(WaitForDone(*farm, id, 10, absl::Seconds(60))) << farm->Logs();
  ASSERT_TRUE(farm->KillCoordinator().ok());
  auto redis = Connect(*farm);
  ASSERT_TRUE(redis);
  ASSERT_TRUE(redis->Command({"FLUSHALL"}).ok());
  ASSERT_TRUE(farm->StartCoordinator().ok()) << farm->Logs();
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "sweep adopted-at-start (" + id + ") adopted from"))
      << farm->CoordinatorLog();
  // Found by its name and by its old id (kept from metadata.jsonl).
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState("adopted-at-start", pb::DONE, absl::Seconds(120)));
  EXPECT_EQ(st.sweep_id(), id);
  EXPECT_EQ(st.done(), 40);
  EXPECT_EQ(st.failed(), 0);
  EXPECT_EQ(st.recoveries(), 1);
  EXPECT_TRUE(absl::StrContains(Warnings(st), "adopted from its folder")) << Warnings(st);
  const SweepFolderCheck check = CheckFolder(*farm, spec);
  EXPECT_TRUE(check.ok()) << check.Summary();
}

TEST(RedisLossTest, SdfarmAdoptRendersOnlyTheMissingImages) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2, .engine = "synthetic:20", .job_size = kJobSize}));
  const json spec = Spec("by-hand", 40);
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  ASSERT_TRUE(WaitForDone(*farm, id, 10, absl::Seconds(60))) << farm->Logs();
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", farm->address()},
                                                                {"SDFARM_TOKEN", farm->client_token()}};
  // Forgotten, the folder kept: its state is gone from Redis.
  RunResult rm = RunProgram({SDFARM_CLIENT_BIN, "rm", "--keep-files", "by-hand"}, env, absl::Minutes(1));
  ASSERT_EQ(rm.exit_code, 0) << rm.output;
  auto redis = Connect(*farm);
  ASSERT_TRUE(redis);
  EXPECT_EQ(redis->Command({"EXISTS", "sdfarm:sweep:" + id})->AsInt().value_or(-1), 0);

  // The jobs that still lack an image are what adopt must render, no more.
  const std::string dir = farm->output_root() + "/by-hand";
  const coordinator::SweepExpander expander = Expander(spec);
  int64_t on_disk = 0, jobs_to_render = 0;
  {
    FARM_ASSERT_OK_AND_ASSIGN(auto out, coordinator::SweepOutput::Open(farm->output_root(), "by-hand"));
    on_disk = static_cast<int64_t>(out->recorded());
    for (int64_t j = 0; j < expander.num_jobs(); ++j) {
      const coordinator::JobSlice job = expander.JobAt(j);
      for (int64_t i = job.first_item; i < job.first_item + job.count; ++i) {
        if (!out->IsRecorded(expander.FileName(expander.ItemAt(i)))) {
          ++jobs_to_render;
          break;
        }
      }
    }
  }
  ASSERT_GE(on_disk, 10);
  ASSERT_LT(on_disk, 40);
  auto added = [&] {
    auto info = redis->Command({"XINFO", "STREAM", "sdfarm:jobs:tiny-sd"});
    if (!info.ok()) return int64_t{-1};
    for (size_t i = 0; i + 1 < info->array().size(); i += 2) {
      if (info->array()[i].str() == "entries-added") return info->array()[i + 1].AsInt().value_or(-1);
    }
    return int64_t{-1};
  };
  const int64_t added_before = added();
  ASSERT_GE(added_before, 0);

  RunResult adopt = RunProgram({SDFARM_CLIENT_BIN, "adopt", "by-hand", "--watch"}, env, absl::Minutes(2));
  EXPECT_EQ(adopt.exit_code, 0) << adopt.output << farm->Logs();
  EXPECT_TRUE(absl::StrContains(adopt.output, absl::StrCat("adopted sweep ", id, " (by-hand)"))) << adopt.output;
  EXPECT_TRUE(absl::StrContains(adopt.output, absl::StrCat(on_disk, " images on disk kept, ", 40 - on_disk,
                                                           " to render")))
      << adopt.output;
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState("by-hand", pb::DONE, absl::Seconds(60)));
  EXPECT_EQ(st.done(), 40);
  const SweepFolderCheck check = CheckFolder(*farm, spec);
  EXPECT_TRUE(check.ok()) << check.Summary();
  // Only the jobs with missing images went to the workers.
  EXPECT_EQ(added() - added_before, jobs_to_render);
  EXPECT_FALSE(fs::exists(dir + "/.sdfarm-removed"));

  // A sweep whose state is intact is left alone.
  RunResult again = RunProgram({SDFARM_CLIENT_BIN, "adopt", "by-hand"}, env, absl::Minutes(1));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_TRUE(absl::StrContains(again.output, "nothing to adopt")) << again.output;
  // No folder, no sweep.
  RunResult none = RunProgram({SDFARM_CLIENT_BIN, "adopt", "no-such-sweep"}, env, absl::Minutes(1));
  EXPECT_EQ(none.exit_code, 1) << none.output;
  EXPECT_TRUE(absl::StrContains(none.output, "no sweep folder")) << none.output;
}

TEST(RedisLossTest, ResubmittingALostSweepsSpecAdoptsIt) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1, .engine = "synthetic:20", .job_size = kJobSize}));
  const json spec = Spec("resubmitted", 20);
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  ASSERT_TRUE(WaitForDone(*farm, id, 4, absl::Seconds(60))) << farm->Logs();
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", farm->address()},
                                                                {"SDFARM_TOKEN", farm->client_token()}};
  RunResult rm = RunProgram({SDFARM_CLIENT_BIN, "rm", "--keep-files", "resubmitted"}, env, absl::Minutes(1));
  ASSERT_EQ(rm.exit_code, 0) << rm.output;
  // Another spec under that name is still refused: the folder holds images.
  json other = spec;
  other["steps"] = 3;
  EXPECT_EQ(farm->Submit(other.dump()).status().code(), absl::StatusCode::kAlreadyExists);
  // The same spec takes the folder back, with its id.
  FARM_ASSERT_OK_AND_ASSIGN(std::string again, farm->Submit(spec.dump()));
  EXPECT_EQ(again, id);
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Seconds(60)));
  EXPECT_EQ(st.done(), 20);
  const SweepFolderCheck check = CheckFolder(*farm, spec);
  EXPECT_TRUE(check.ok()) << check.Summary();
}

TEST(RedisLossTest, ARedisThatMayLoseWritesIsWarnedAbout) {
  {
    FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .redis = {.appendfsync_always = false}}));
    EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "WARNING: Redis runs with appendfsync everysec"))
        << farm->CoordinatorLog();
    FARM_ASSERT_OK_AND_ASSIGN(pb::WorkersResponse workers, farm->Workers());
    ASSERT_EQ(workers.warnings_size(), 1);
    EXPECT_TRUE(absl::StrContains(workers.warnings(0), "appendfsync everysec")) << workers.warnings(0);
  }
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  EXPECT_FALSE(absl::StrContains(farm->CoordinatorLog(), "appendfsync")) << farm->CoordinatorLog();
  FARM_ASSERT_OK_AND_ASSIGN(pb::WorkersResponse workers, farm->Workers());
  EXPECT_EQ(workers.warnings_size(), 0);
}

}  // namespace
}  // namespace sdfarm::testing
