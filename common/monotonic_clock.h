// A clock for durations that a wall-clock step (NTP, an operator's `date -s`)
// must not stretch or shrink: leases, heartbeat timeouts, retry times, the
// reconciler's schedule. MonotonicNow() is std::chrono::steady_clock as an
// absl::Time: compare and subtract such times only with each other, never
// with absl::Now() or show them as dates.
//
//   const absl::Time due = MonotonicNow() + absl::Seconds(2);
//   if (MonotonicNow() >= due) ...
#ifndef SDFARM_COMMON_MONOTONIC_CLOCK_H_
#define SDFARM_COMMON_MONOTONIC_CLOCK_H_

#include <chrono>

#include "absl/time/time.h"

namespace sdfarm {

inline absl::Time MonotonicNow() {
  return absl::UnixEpoch() + absl::FromChrono(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now().time_since_epoch()));
}

}  // namespace sdfarm

#endif  // SDFARM_COMMON_MONOTONIC_CLOCK_H_
