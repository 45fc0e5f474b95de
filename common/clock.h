// The farm's one seam for time. Code that reads the time or waits for it takes
// a Clock&: RealClock() in the programs, a FakeClock in tests, which then run
// leases, heartbeats, reconciliation and deadlines without sleeping and
// without timing slack.
//
// Two times, on purpose:
//   Now()        wall-clock time: what people read (log lines, metadata rows,
//                "started at"). May step back (NTP, an operator).
//   Monotonic()  for intervals, deadlines, leases and schedules. Never steps
//                back; its epoch means nothing, compare it only with itself.
//
//   absl::MutexLock lock(&mu_);
//   const absl::Time deadline = clock.Monotonic() + absl::Seconds(2);
//   clock.AwaitWithDeadline(&mu_, absl::Condition(&changed_), deadline);
//
//   FakeClock clock;                       // in a test
//   std::thread t([&] { service.RunOnce(); });   // waits 2 s on the clock
//   ASSERT_TRUE(clock.BlockUntilWaiters(1, absl::Seconds(10)));
//   clock.Advance(absl::Seconds(2));       // wakes it, deterministically
#ifndef SDFARM_COMMON_CLOCK_H_
#define SDFARM_COMMON_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sdfarm {

class Clock {
 public:
  virtual ~Clock() = default;

  // Wall-clock time.
  virtual absl::Time Now() = 0;
  // Monotonic time (std::chrono::steady_clock on a real clock).
  virtual absl::Time Monotonic() = 0;

  // Called with *mu held: releases it until `cond` holds or Monotonic()
  // reaches `deadline`, then holds it again. Returns whether `cond` holds.
  virtual bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& cond, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;

  // Blocks until Monotonic() reaches `deadline`.
  virtual void SleepUntil(absl::Time deadline) = 0;

  void SleepFor(absl::Duration d) { SleepUntil(Monotonic() + d); }
};

// The process's real clock (wall: absl::Now(); monotonic: steady_clock).
Clock& RealClock();

// A clock that moves only when a test says so. Thread-safe. Waiters notice an
// Advance() within a millisecond (they re-check the fake time at that real
// interval: what they see, and when they wake in fake time, is deterministic).
class FakeClock final : public Clock {
 public:
  // Both times start at `start` (a fixed, recognisable instant by default).
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1800000000));

  absl::Time Now() override;
  absl::Time Monotonic() override;
  bool AwaitWithDeadline(absl::Mutex* mu, const absl::Condition& cond, absl::Time deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void SleepUntil(absl::Time deadline) override;

  // Moves both times forward by `d` (>= 0) and wakes the waiters it passes.
  void Advance(absl::Duration d);
  // Steps the wall clock only (by any amount, back too), as NTP or an
  // operator would: Monotonic() does not move.
  void StepWall(absl::Duration d);

  // Threads now inside AwaitWithDeadline or SleepUntil.
  int waiters();
  // Test helper: blocks (in real time, up to `real_timeout`) until at least
  // `n` threads wait on this clock. Returns whether they do.
  bool BlockUntilWaiters(int n, absl::Duration real_timeout);

 private:
  absl::Mutex mu_;
  absl::Time wall_ ABSL_GUARDED_BY(mu_);
  absl::Time mono_ ABSL_GUARDED_BY(mu_);
  int waiters_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sdfarm

#endif  // SDFARM_COMMON_CLOCK_H_
