// A worker's identity across restarts, on a real farm: a worker killed in the
// middle of a job and started again under the same --worker-id gets its job
// back as soon as its old registration has lapsed (the coordinator's
// heartbeat timeout), not a whole lease later, and renders it once more; the
// sweep ends with every image exactly once (docs/farm.md, "Job lifecycle" 2
// and "Auth").
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/sweep_check.h"

namespace sdfarm::testing {
namespace {

namespace pb = sdfarm::v1;
using json = nlohmann::json;

TEST(WorkerIdentity, ARestartedWorkerGetsItsOwnJobBackBeforeTheLease) {
  // A 60 s lease: anything finishing well before it came back through the
  // worker's own identity, not through the lease running out.
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0,
                                                    .engine = "synthetic:100",
                                                    .lease_seconds = 60,
                                                    .coordinator_args = {"--heartbeat-timeout", "3"}}));
  const json spec = {{"name", "phoenix"}, {"model", "tiny-sd"}, {"prompts", {"a phoenix"}}, {"seeds", "0-3"},
                     {"guidance_scales", {7.5}}, {"steps", 40}, {"sizes", {"64x64"}}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(int first, farm->StartWorker({.worker_id = "phoenix-1"}));
  // Rendering (4 s for the whole job): killed in the middle.
  for (absl::Time deadline = absl::Now() + absl::Seconds(60);;) {
    auto st = farm->Status(id);
    if (st.ok() && !st->active().empty() && st->active(0).step() > 0) break;
    ASSERT_LT(absl::Now(), deadline) << farm->Logs();
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(farm->KillWorker(first).ok());
  const absl::Time killed = absl::Now();
  FARM_ASSERT_OK_AND_ASSIGN(int second, farm->StartWorker({.worker_id = "phoenix-1"}));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(2)));
  EXPECT_LT(absl::Now() - killed, absl::Seconds(40)) << "the job waited for its lease:\n" << farm->Logs();
  EXPECT_EQ(st.done(), 4);
  EXPECT_EQ(st.failed(), 0);
  const std::string log = farm->WorkerLog(second);
  EXPECT_TRUE(absl::StrContains(log, "claimed job " + id + "/0 (4 items, delivery 2)")) << log;
  auto parsed = coordinator::SweepSpec::FromJson(spec, coordinator::SweepLimits{}, 0);
  ASSERT_TRUE(parsed.ok());
  coordinator::SweepExpander expander(*parsed, 4);
  const SweepFolderCheck check = CheckSweepFolder(farm->output_root() + "/phoenix", expander, "tiny-sd");
  EXPECT_TRUE(check.ok()) << check.Summary();
}

}  // namespace
}  // namespace sdfarm::testing
