// See throughput.h.
#include "coordinator/throughput.h"

#include <algorithm>

namespace sdfarm::coordinator {

void Throughput::Add(absl::Time finished, absl::Time started) {
  entries_.push_back({finished, std::min(started, finished)});
  Trim(finished);
}

double Throughput::PerSecond(absl::Time now) {
  Trim(now);
  if (entries_.empty()) return 0;
  absl::Time first_start = now;
  for (const Entry& e : entries_) first_start = std::min(first_start, e.started);
  const absl::Duration span = std::clamp(now - first_start, absl::Seconds(1), kWindow);
  return static_cast<double>(entries_.size()) / absl::ToDoubleSeconds(span);
}

void Throughput::Trim(absl::Time now) {
  while (!entries_.empty() && entries_.front().finished < now - kWindow) entries_.pop_front();
}

}  // namespace sdfarm::coordinator
