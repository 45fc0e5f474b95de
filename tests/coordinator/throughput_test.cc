// Throughput: images/s counted from the start of the images' jobs.
#include "coordinator/throughput.h"

#include <gtest/gtest.h>

namespace sdfarm::coordinator {
namespace {

const absl::Time t0 = absl::FromUnixSeconds(1'000'000);

TEST(Throughput, ABatchCountsFromItsJobsStartNotItsFirstImage) {
  // A worker renders batches of 4 images in 10.5 s (0.38 images/s).
  Throughput t;
  const absl::Time end = t0 + absl::Seconds(10.5);
  for (int i = 0; i < 4; ++i) t.Add(end, t0);
  EXPECT_NEAR(t.PerSecond(end), 4 / 10.5, 1e-9);
  // Steady state over a full window: 0.33 to 0.40.
  for (int b = 1; b < 10; ++b) {
    const absl::Time s = t0 + absl::Seconds(10.5 * b), e = s + absl::Seconds(10.5);
    for (int i = 0; i < 4; ++i) t.Add(e, s);
    const double r = t.PerSecond(e);
    EXPECT_GT(r, 0.33) << b;
    EXPECT_LE(r, 0.4 + 1e-9) << b;
  }
}

TEST(Throughput, NothingInTheLastMinuteIsZero) {
  Throughput t;
  EXPECT_EQ(t.PerSecond(t0), 0);
  t.Add(t0 + absl::Seconds(2), t0);
  EXPECT_NEAR(t.PerSecond(t0 + absl::Seconds(2)), 0.5, 1e-9);
  EXPECT_NEAR(t.PerSecond(t0 + absl::Seconds(30)), 1.0 / 30, 1e-9);
  EXPECT_EQ(t.PerSecond(t0 + absl::Seconds(63)), 0);
}

TEST(Throughput, AtLeastASecondAndAtMostAMinute) {
  Throughput t;
  t.Add(t0, t0);  // a start reported after the finish is taken as the finish
  EXPECT_NEAR(t.PerSecond(t0), 1.0, 1e-9);
  Throughput slow;
  // A job that took five minutes: its image counts over the window only.
  slow.Add(t0 + absl::Minutes(5), t0);
  EXPECT_NEAR(slow.PerSecond(t0 + absl::Minutes(5)), 1.0 / 60, 1e-9);
}

}  // namespace
}  // namespace sdfarm::coordinator
