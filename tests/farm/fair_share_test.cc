// The coordinator keeps a bounded window of each sweep in Redis and shares
// the workers between sweeps: a small sweep submitted behind a huge one
// starts at once instead of waiting for it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "tests/farm/farm_fixture.h"

namespace sdfarm::testing {
namespace {

namespace pb = ::sdfarm::v1;
using nlohmann::json;

TEST(FairShare, ASmallSweepBehindAHugeOneFinishesFirstAndRedisStaysBounded) {
  auto farm_or = Farm::Start({.workers = 2, .engine = "synthetic:10", .job_size = 4});
  ASSERT_TRUE(farm_or.ok()) << farm_or.status().ToString();
  auto& farm = *farm_or;
  json huge = {{"name", "huge"}, {"model", "tiny-sd"}, {"prompts", {"a"}}, {"seeds", "0-99999"},
               {"steps", 4},     {"sizes", {"64x64"}}};
  auto huge_id = farm->Submit(huge.dump());
  ASSERT_TRUE(huge_id.ok()) << huge_id.status().ToString();
  auto redis = RedisClient::Connect(farm->redis()->client_options());
  ASSERT_TRUE(redis.ok());

  // Let the huge sweep get going; its jobs in Redis stay within the window.
  int64_t max_len = 0;
  const absl::Time deadline = absl::Now() + absl::Minutes(1);
  while (absl::Now() < deadline) {
    auto len = (*redis)->Command({"XLEN", "sdfarm:jobs:tiny-sd"});
    ASSERT_TRUE(len.ok());
    max_len = std::max(max_len, len->AsInt().value_or(0));
    auto st = farm->Status(*huge_id);
    if (st.ok() && st->done() >= 40) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  json small = {{"name", "small"}, {"model", "tiny-sd"}, {"prompts", {"b"}}, {"seeds", "0-7"},
                {"steps", 4},      {"sizes", {"64x64"}}};
  auto small_id = farm->Submit(small.dump());
  ASSERT_TRUE(small_id.ok());
  auto before = farm->Status(*huge_id);
  ASSERT_TRUE(before.ok());
  ASSERT_GE(before->done(), 40) << farm->Logs();
  auto small_done = farm->WaitForState(*small_id, pb::DONE, absl::Minutes(1));
  ASSERT_TRUE(small_done.ok()) << small_done.status().ToString();
  auto after = farm->Status(*huge_id);
  ASSERT_TRUE(after.ok());
  // The small sweep's 2 jobs went out alternately with the huge sweep's:
  // only the jobs already running or waiting (2 + 2), about one huge job per
  // small job, and some slack for a loaded machine came first. Without the
  // fair share the small sweep would wait for all 25,000 huge jobs.
  EXPECT_LE(after->done() - before->done(), 12 * 4) << "the huge sweep rendered " << after->done() - before->done()
                                                    << " images while the small one waited";
  EXPECT_EQ(after->state(), pb::RUNNING);
  EXPECT_LE(max_len, 8) << "jobs of one sweep held in Redis";
  EXPECT_LT(after->jobs_done(), after->jobs());

  // Cancelling empties the stream.
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
  pb::SweepRef ref;
  ref.set_sweep(*huge_id);
  pb::SweepStatus st;
  ASSERT_TRUE(farm->client()->Cancel(&ctx, ref, &st).ok());
  auto len = (*redis)->Command({"XLEN", "sdfarm:jobs:tiny-sd"});
  ASSERT_TRUE(len.ok());
  EXPECT_EQ(len->AsInt().value_or(-1), 0);
}

}  // namespace
}  // namespace sdfarm::testing
