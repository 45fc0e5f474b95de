// RealClock and FakeClock (see clock.h).
#include "common/clock.h"

#include <chrono>

#include "absl/time/clock.h"

namespace sdfarm {
namespace {

// How often a fake-clock waiter re-checks the fake time, in real time.
constexpr absl::Duration kFakePoll = absl::Milliseconds(1);

class SystemClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }

  absl::Time Monotonic() override {
    return absl::UnixEpoch() +
           absl::FromChrono(std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch()));
  }

  bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& cond, absl::Time deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    // absl's timed waits are relative to the wall clock; re-measure the rest
    // on the monotonic clock after each, so a wall step neither ends the wait
    // early nor stretches it.
    while (!cond.Eval()) {
      const absl::Duration left = deadline - Monotonic();
      if (left <= absl::ZeroDuration()) return false;
      if (mu->AwaitWithTimeout(cond, left)) return true;
    }
    return true;
  }

  void SleepUntil(absl::Time deadline) override {
    for (absl::Duration left = deadline - Monotonic(); left > absl::ZeroDuration();
         left = deadline - Monotonic()) {
      absl::SleepFor(left);
    }
  }
};

}  // namespace

Clock& RealClock() {
  static SystemClock* const clock = new SystemClock();
  return *clock;
}

FakeClock::FakeClock(absl::Time start) : wall_(start), mono_(start) {}

absl::Time FakeClock::Now() {
  absl::MutexLock lock(&mu_);
  return wall_;
}

absl::Time FakeClock::Monotonic() {
  absl::MutexLock lock(&mu_);
  return mono_;
}

bool FakeClock::AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& cond, absl::Time deadline) {
  // Lock order: the caller's mu, then mu_ (Advance never takes the caller's).
  {
    absl::MutexLock lock(&mu_);
    ++waiters_;
  }
  bool result = cond.Eval();
  while (!result && Monotonic() < deadline) {
    result = mu->AwaitWithTimeout(cond, kFakePoll);
  }
  absl::MutexLock lock(&mu_);
  --waiters_;
  return result;
}

void FakeClock::SleepUntil(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  ++waiters_;
  auto passed = [this, deadline]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return mono_ >= deadline; };
  while (!passed()) mu_.AwaitWithTimeout(absl::Condition(&passed), kFakePoll);
  --waiters_;
}

void FakeClock::Advance(absl::Duration d) {
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  absl::MutexLock lock(&mu_);
  wall_ += d;
  mono_ += d;
}

void FakeClock::StepWall(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  wall_ += d;
}

int FakeClock::waiters() {
  absl::MutexLock lock(&mu_);
  return waiters_;
}

bool FakeClock::BlockUntilWaiters(int n, absl::Duration real_timeout) {
  absl::MutexLock lock(&mu_);
  auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return waiters_ >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), real_timeout);
}

}  // namespace sdfarm
