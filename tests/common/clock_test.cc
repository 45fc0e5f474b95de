// The Clock seam: the real clock's two times, and a fake clock that moves only
// when the test says so, waking waiters at exactly the fake deadline.
#include "common/clock.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace sdfarm {
namespace {

TEST(RealClock, WallIsAbslNowAndMonotonicAdvances) {
  Clock& clock = RealClock();
  EXPECT_LT(absl::AbsDuration(clock.Now() - absl::Now()), absl::Seconds(1));
  const absl::Time a = clock.Monotonic();
  clock.SleepFor(absl::Milliseconds(20));
  const absl::Time b = clock.Monotonic();
  EXPECT_GE(b - a, absl::Milliseconds(20));
  EXPECT_LT(b - a, absl::Seconds(5));
}

TEST(RealClock, AwaitReturnsAtOnceWhenTheConditionHoldsAndFalseAtTheDeadline) {
  Clock& clock = RealClock();
  absl::Mutex mu;
  bool flag = true;
  absl::MutexLock lock(&mu);
  EXPECT_TRUE(clock.AwaitWithDeadline(&mu, absl::Condition(&flag), clock.Monotonic() + absl::Seconds(30)));
  flag = false;
  const absl::Time start = clock.Monotonic();
  EXPECT_FALSE(clock.AwaitWithDeadline(&mu, absl::Condition(&flag), start + absl::Milliseconds(30)));
  EXPECT_GE(clock.Monotonic() - start, absl::Milliseconds(30));
}

TEST(FakeClock, MovesOnlyWhenAdvancedAndAWallStepLeavesMonotonicAlone) {
  FakeClock clock(absl::FromUnixSeconds(1000));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(1000));
  EXPECT_EQ(clock.Monotonic(), absl::FromUnixSeconds(1000));
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(1005));
  EXPECT_EQ(clock.Monotonic(), absl::FromUnixSeconds(1005));
  clock.StepWall(absl::Hours(-1));  // NTP steps the wall clock back
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(1005 - 3600));
  EXPECT_EQ(clock.Monotonic(), absl::FromUnixSeconds(1005));
  clock.Advance(absl::Seconds(-3));  // never backwards
  EXPECT_EQ(clock.Monotonic(), absl::FromUnixSeconds(1005));
}

TEST(FakeClock, AWaiterWakesAtItsFakeDeadlineAndNotBefore) {
  FakeClock clock;
  absl::Mutex mu;
  bool never = false;
  std::atomic<int> result{-1};
  const absl::Time deadline = clock.Monotonic() + absl::Seconds(10);
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    result = clock.AwaitWithDeadline(&mu, absl::Condition(&never), deadline) ? 1 : 0;
  });
  ASSERT_TRUE(clock.BlockUntilWaiters(1, absl::Seconds(10)));
  clock.Advance(absl::Seconds(9));
  absl::SleepFor(absl::Milliseconds(50));  // real time: the waiter must still be waiting
  EXPECT_EQ(result.load(), -1);
  EXPECT_EQ(clock.waiters(), 1);
  clock.Advance(absl::Seconds(1));
  waiter.join();
  EXPECT_EQ(result.load(), 0);
  EXPECT_EQ(clock.waiters(), 0);
}

TEST(FakeClock, AWaiterWakesWhenItsConditionTurnsTrueWithoutTimeMoving) {
  FakeClock clock;
  absl::Mutex mu;
  bool ready = false;
  std::atomic<int> result{-1};
  std::thread waiter([&] {
    absl::MutexLock lock(&mu);
    result = clock.AwaitWithDeadline(&mu, absl::Condition(&ready), clock.Monotonic() + absl::Seconds(1)) ? 1 : 0;
  });
  ASSERT_TRUE(clock.BlockUntilWaiters(1, absl::Seconds(10)));
  {
    absl::MutexLock lock(&mu);
    ready = true;
  }
  waiter.join();
  EXPECT_EQ(result.load(), 1);
}

TEST(FakeClock, SleepersWakeInDeadlineOrder) {
  FakeClock clock;
  absl::Mutex mu;
  std::vector<int> order;
  auto sleeper = [&](int id, absl::Duration d) {
    const absl::Time until = clock.Monotonic() + d;
    clock.SleepUntil(until);
    absl::MutexLock lock(&mu);
    order.push_back(id);
  };
  std::thread a(sleeper, 1, absl::Seconds(3)), b(sleeper, 2, absl::Seconds(1));
  ASSERT_TRUE(clock.BlockUntilWaiters(2, absl::Seconds(10)));
  clock.Advance(absl::Seconds(2));
  b.join();  // only the 1 s sleeper has passed its time
  {
    absl::MutexLock lock(&mu);
    EXPECT_EQ(order, std::vector<int>({2}));
  }
  clock.Advance(absl::Seconds(1));
  a.join();
  EXPECT_EQ(order, std::vector<int>({2, 1}));
}

TEST(FakeClock, BlockUntilWaitersTimesOutWhenNobodyWaits) {
  FakeClock clock;
  EXPECT_FALSE(clock.BlockUntilWaiters(1, absl::Milliseconds(20)));
}

}  // namespace
}  // namespace sdfarm
