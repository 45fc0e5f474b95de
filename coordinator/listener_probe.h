// The coordinator's self-probe: every `interval` it makes a grpc.health.v1
// Check on a fresh connection to its own listening address
// (listener_limits.h: CheckHealth). After `max_failures` failures in a row
// the listener is taken for dead (gRPC 1.51's accept loop does not recover
// from EMFILE) and `on_dead` runs once, on the probe's thread, with the last
// error: the coordinator logs it and exits non-zero so that its supervisor
// restarts it.
//
//   ListenerProbe probe({.address = "127.0.0.1:7733", .creds = creds}, [](const absl::Status& why) {...});
//   ...
//   probe.Stop();   // or the destructor
#ifndef SDFARM_COORDINATOR_LISTENER_PROBE_H_
#define SDFARM_COORDINATOR_LISTENER_PROBE_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace sdfarm::coordinator {

struct ListenerProbeOptions {
  std::string address;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  absl::Duration interval = absl::Seconds(5);
  absl::Duration timeout = absl::Seconds(5);  // of one check
  int max_failures = 6;
};

class ListenerProbe {
 public:
  ListenerProbe(ListenerProbeOptions options, std::function<void(const absl::Status&)> on_dead);
  ~ListenerProbe();  // Stop()
  ListenerProbe(const ListenerProbe&) = delete;
  ListenerProbe& operator=(const ListenerProbe&) = delete;

  void Stop();

 private:
  void Loop();

  const ListenerProbeOptions options_;
  const std::function<void(const absl::Status&)> on_dead_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_LISTENER_PROBE_H_
