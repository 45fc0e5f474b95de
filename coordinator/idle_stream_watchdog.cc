#include "coordinator/idle_stream_watchdog.h"

#include <algorithm>

namespace sdfarm::coordinator {

IdleStreamWatchdog::IdleStreamWatchdog(absl::Duration idle_limit)
    : idle_limit_(idle_limit), thread_([this] { Loop(); }) {}

IdleStreamWatchdog::~IdleStreamWatchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void IdleStreamWatchdog::Loop() {
  // Checked a few times per limit, at most once a second.
  const absl::Duration period = std::clamp(idle_limit_ / 4, absl::Milliseconds(50), absl::Seconds(1));
  const auto limit = absl::ToChronoMilliseconds(idle_limit_);
  absl::MutexLock lock(&mu_);
  while (true) {
    // The condition is only ever stop_; the wait's timeout is the period.
    mu_.AwaitWithTimeout(absl::Condition(&stop_), period);
    if (stop_) return;
    const Clock::time_point now = Clock::now();
    for (auto& [id, e] : streams_) {
      if (!e.cancelled && now - e.last > limit) {
        e.cancelled = true;
        e.ctx->TryCancel();
        cancelled_.fetch_add(1);
      }
    }
  }
}

IdleStreamWatchdog::Guard::Guard(IdleStreamWatchdog* watchdog, grpc::ServerContext* ctx) : watchdog_(watchdog) {
  absl::MutexLock lock(&watchdog_->mu_);
  id_ = watchdog_->next_id_++;
  watchdog_->streams_[id_] = Entry{ctx, Clock::now()};
}

IdleStreamWatchdog::Guard::~Guard() {
  absl::MutexLock lock(&watchdog_->mu_);
  watchdog_->streams_.erase(id_);
}

void IdleStreamWatchdog::Guard::Touch() {
  absl::MutexLock lock(&watchdog_->mu_);
  watchdog_->streams_[id_].last = Clock::now();
}

bool IdleStreamWatchdog::Guard::cancelled() const {
  absl::MutexLock lock(&watchdog_->mu_);
  auto it = watchdog_->streams_.find(id_);
  return it != watchdog_->streams_.end() && it->second.cancelled;
}

}  // namespace sdfarm::coordinator
