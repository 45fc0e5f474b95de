// One coordinator per farm (issue 12): a second coordinator on the same
// output root, the same port, or the same Redis and key prefix refuses to
// start with a message naming the first; a coordinator that finds another
// holding the farm's leader lease while it runs stops writing and exits; a
// coordinator killed with kill -9 is replaced within its lease and the sweep
// ends with every image exactly once.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "tests/common/redis_server_fixture.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/sweep_check.h"

namespace sdfarm::testing {
namespace {

namespace pb = ::sdfarm::v1;
using nlohmann::json;

json Spec(const std::string& name, int seeds) {
  return {{"name", name},          {"model", "tiny-sd"},         {"prompts", {"a lighthouse in the fog"}},
          {"seeds", absl::StrCat("0-", seeds - 1)}, {"guidance_scales", {7.5}}, {"steps", 2},
          {"samplers", {"euler_a"}}, {"sizes", {"64x64"}}};
}

SweepFolderCheck CheckFolder(Farm& farm, const json& spec, int job_size) {
  auto parsed = coordinator::SweepSpec::FromJson(spec, coordinator::SweepLimits{}, 0);
  if (!parsed.ok()) {
    SweepFolderCheck c;
    c.problems.push_back(parsed.status().ToString());
    return c;
  }
  coordinator::SweepExpander expander(*parsed, job_size);
  return CheckSweepFolder(farm.output_root() + "/" + spec["name"].get<std::string>(), expander, "tiny-sd");
}

// Runs a second sdfarm-coordinator to completion (it should refuse to start).
RunResult SecondCoordinator(Farm& farm, const std::string& listen, const std::string& output_root,
                            const std::string& redis_url) {
  return RunProgram({SDFARM_COORDINATOR_BIN, "--listen", listen, "--redis-url", redis_url, "--output-root",
                     output_root, "--leader-lease", "3"},
                    {{"SDFARM_CLIENT_TOKEN", farm.client_token()}, {"SDFARM_WORKER_TOKEN", farm.worker_token()}},
                    absl::Seconds(60));
}

TEST(OneCoordinatorTest, ASecondCoordinatorOnTheSameRootIsRefused) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  const std::string pid = absl::StrCat("pid ", farm->coordinator()->pid());
  // Same port and root.
  RunResult same = SecondCoordinator(*farm, farm->address(), farm->output_root(), farm->redis()->url());
  EXPECT_EQ(same.exit_code, 1) << same.output;
  EXPECT_TRUE(absl::StrContains(same.output, "another coordinator (" + pid)) << same.output;
  EXPECT_TRUE(absl::StrContains(same.output, "holds " + farm->output_root())) << same.output;
  // Another port, the same root.
  RunResult other_port = SecondCoordinator(*farm, "127.0.0.1:0", farm->output_root(), farm->redis()->url());
  EXPECT_EQ(other_port.exit_code, 1) << other_port.output;
  EXPECT_TRUE(absl::StrContains(other_port.output, "another coordinator (" + pid)) << other_port.output;
  // The first one still serves.
  FARM_ASSERT_OK_AND_ASSIGN(auto workers, farm->Workers());
  EXPECT_EQ(workers.workers_size(), 0);
}

TEST(OneCoordinatorTest, ASecondCoordinatorOnTheSameRedisIsRefusedAfterWaitingForTheLease) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  const std::string other_root = farm->dir() + "/other-root";
  const absl::Time start = absl::Now();
  RunResult r = SecondCoordinator(*farm, "127.0.0.1:0", other_root, farm->redis()->url());
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "waiting up to 5 s")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "holds the leader lease sdfarm:leader and keeps renewing it")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, absl::StrCat("pid=", farm->coordinator()->pid()))) << r.output;
  EXPECT_GE(took, absl::Seconds(4));  // it waited for the lease (3 s + 2 s margin) before refusing
  // Nothing of the second one is left in Redis: the lease is still the first's.
  FARM_ASSERT_OK_AND_ASSIGN(auto redis, RedisClient::Connect(farm->redis()->client_options()));
  auto holder = redis->Command({"GET", "sdfarm:leader"});
  ASSERT_TRUE(holder.ok());
  EXPECT_TRUE(absl::StrContains(holder->str(), absl::StrCat("pid=", farm->coordinator()->pid()))) << holder->str();
}

TEST(OneCoordinatorTest, TheSamePortIsNotShared) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  // Another root and another Redis: only the port is shared. gRPC's default
  // SO_REUSEPORT would let both serve it; the coordinator turns it off.
  FARM_ASSERT_OK_AND_ASSIGN(auto other_redis, RedisServer::Start());
  RunResult r = SecondCoordinator(*farm, farm->address(), farm->dir() + "/other-root", other_redis->url());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "cannot serve on " + farm->address())) << r.output;
}

TEST(OneCoordinatorTest, ACoordinatorThatLosesTheLeaseStopsWriting) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  FARM_ASSERT_OK_AND_ASSIGN(auto redis, RedisClient::Connect(farm->redis()->client_options()));
  // Another instance takes the lease (as one would after this one stalled
  // past its lease): the next renewal finds it, and the coordinator exits.
  ASSERT_TRUE(redis->Command({"SET", "sdfarm:leader", "0123456789abcdef host=elsewhere pid=1", "PX", "60000"}).ok());
  auto code = farm->coordinator()->Wait(absl::Seconds(15));
  ASSERT_TRUE(code.has_value()) << farm->CoordinatorLog();
  EXPECT_EQ(*code, 3) << farm->CoordinatorLog();
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "FATAL: lost the leadership")) << farm->CoordinatorLog();
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "host=elsewhere")) << farm->CoordinatorLog();
}

TEST(OneCoordinatorTest, AKilledCoordinatorIsReplacedWithinItsLease) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2, .engine = "synthetic:20", .job_size = 2}));
  const json spec = Spec("taken-over", 40);
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline) {
    auto st = farm->Status(id);
    if (st.ok() && st->done() >= 10) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(farm->KillCoordinator().ok());
  const absl::Time restart = absl::Now();
  ASSERT_TRUE(farm->StartCoordinator().ok()) << farm->Logs();
  // The killed one's lease (3 s) runs out, then the new one serves.
  EXPECT_LE(absl::Now() - restart, absl::Seconds(12)) << farm->CoordinatorLog();
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "this coordinator took it")) << farm->CoordinatorLog();
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Seconds(90)));
  EXPECT_EQ(st.done(), 40);
  EXPECT_EQ(st.failed(), 0);
  const SweepFolderCheck check = CheckFolder(*farm, spec, 2);
  EXPECT_TRUE(check.ok()) << check.Summary();
}

}  // namespace
}  // namespace sdfarm::testing
