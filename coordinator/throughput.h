// Throughput: the one definition of "images per second" behind every view
// (`sdfarm status`, `sdfarm workers`, the watch progress line, dry-run ETAs).
//
//   Throughput t;
//   t.Add(/*finished=*/now, /*started=*/job_start);   // one finished image
//   double r = t.PerSecond(now);
//
// The rate is the number of images finished in the last minute divided by the
// time since the earliest of their jobs started (at most a minute, at least
// a second). Counting from the job's start, not from its first image, keeps a
// batch of four images that took ten seconds at 0.4/s instead of 4/s. Rates of
// a sweep, a model or the farm are sums of their live workers' rates, so
// every view adds up.
#ifndef SDFARM_COORDINATOR_THROUGHPUT_H_
#define SDFARM_COORDINATOR_THROUGHPUT_H_

#include <deque>

#include "absl/time/time.h"

namespace sdfarm::coordinator {

class Throughput {
 public:
  static constexpr absl::Duration kWindow = absl::Seconds(60);

  // One image finished at `finished`; its job started rendering at `started`.
  void Add(absl::Time finished, absl::Time started);
  // Images per second at `now` (0 when none finished in the window).
  double PerSecond(absl::Time now);

 private:
  struct Entry {
    absl::Time finished, started;
  };
  void Trim(absl::Time now);
  std::deque<Entry> entries_;
};

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_THROUGHPUT_H_
