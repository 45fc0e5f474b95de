#include "coordinator/listener_probe.h"

#include "coordinator/listener_limits.h"

namespace sdfarm::coordinator {

ListenerProbe::ListenerProbe(ListenerProbeOptions options, std::function<void(const absl::Status&)> on_dead)
    : options_(std::move(options)), on_dead_(std::move(on_dead)), thread_([this] { Loop(); }) {}

ListenerProbe::~ListenerProbe() { Stop(); }

void ListenerProbe::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void ListenerProbe::Loop() {
  int failures = 0;
  while (!stop_.WaitForNotificationWithTimeout(options_.interval)) {
    absl::Status s = CheckHealth(options_.address, options_.creds, options_.timeout);
    if (stop_.HasBeenNotified()) return;  // the server may be shutting down
    failures = s.ok() ? 0 : failures + 1;
    if (failures >= options_.max_failures) {
      on_dead_(s);
      return;
    }
  }
}

}  // namespace sdfarm::coordinator
