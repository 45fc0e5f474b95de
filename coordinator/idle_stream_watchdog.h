// Cancels server streams that go quiet: a ReportJob stream holds a handler
// thread (and a Redis connection) for as long as it is open, so a stream
// that sends nothing for `idle_limit` is cancelled (ServerContext::TryCancel)
// and its Read() returns false. Times are on the monotonic clock.
//
//   IdleStreamWatchdog watchdog(absl::Minutes(5));      // owns one thread
//   ... in a handler:
//   IdleStreamWatchdog::Guard idle(&watchdog, ctx);
//   while (reader->Read(&msg)) { idle.Touch(); ... }
//   if (idle.cancelled()) return {grpc::StatusCode::DEADLINE_EXCEEDED, ...};
#ifndef SDFARM_COORDINATOR_IDLE_STREAM_WATCHDOG_H_
#define SDFARM_COORDINATOR_IDLE_STREAM_WATCHDOG_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sdfarm::coordinator {

class IdleStreamWatchdog {
 public:
  explicit IdleStreamWatchdog(absl::Duration idle_limit);
  ~IdleStreamWatchdog();  // stops the thread
  IdleStreamWatchdog(const IdleStreamWatchdog&) = delete;
  IdleStreamWatchdog& operator=(const IdleStreamWatchdog&) = delete;

  absl::Duration idle_limit() const { return idle_limit_; }
  // Streams cancelled for idling so far.
  int64_t cancelled() const { return cancelled_.load(); }

  // Watches one stream from construction to destruction (the context must
  // outlive the guard).
  class Guard {
   public:
    Guard(IdleStreamWatchdog* watchdog, grpc::ServerContext* ctx);
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    void Touch();            // a message arrived
    bool cancelled() const;  // the watchdog cancelled this stream

   private:
    IdleStreamWatchdog* watchdog_;
    uint64_t id_;
  };

 private:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    grpc::ServerContext* ctx;
    Clock::time_point last;
    bool cancelled = false;
  };
  void Loop();

  const absl::Duration idle_limit_;
  absl::Mutex mu_;
  std::map<uint64_t, Entry> streams_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int64_t> cancelled_{0};
  std::thread thread_;
};

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_IDLE_STREAM_WATCHDOG_H_
