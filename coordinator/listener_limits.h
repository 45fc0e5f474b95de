// What keeps the coordinator's listener alive under load or attack (security
// finding: ~1,000 idle HTTP/2 connections under `ulimit -n 1024` ran the
// process out of file descriptors, and gRPC 1.51's accept loop then never
// accepted again, grpc/grpc#16058, #20418, #31080):
//
//   - RaiseFileLimit(): the soft RLIMIT_NOFILE up to the hard limit, at start;
//   - ApplyListenerLimits(): gRPC's bounds on threads (ResourceQuota),
//     memory, streams per connection, idle and half-open connections, and
//     keepalive pings (enforced both ways);
//   - CheckHealth(): one grpc.health.v1 Check on a fresh connection, what the
//     self-probe (listener_probe.h) and `sdfarm-coordinator --health-check`
//     run.
//
//   ASSIGN_OR_RETURN(FileLimit limit, RaiseFileLimit());
//   grpc::ServerBuilder builder;
//   ApplyListenerLimits(ListenerLimits{...}, &builder);
#ifndef SDFARM_COORDINATOR_LISTENER_LIMITS_H_
#define SDFARM_COORDINATOR_LISTENER_LIMITS_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sdfarm::coordinator {

struct FileLimit {
  uint64_t before = 0, now = 0, hard = 0;
};

// Sets the soft RLIMIT_NOFILE to the hard limit (no privilege needed).
absl::StatusOr<FileLimit> RaiseFileLimit();

struct ListenerLimits {
  // Handler threads of the sync server: every call in progress (a report
  // stream, a Watch) holds one; past this, new calls get RESOURCE_EXHAUSTED.
  int max_threads = 1500;
  // Memory gRPC may use for connections and messages before it sheds load.
  int64_t memory_quota_bytes = int64_t{4} << 30;
  // Concurrent calls on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
  int max_streams_per_connection = 1000;
  // A connection without any call for this long is closed (GOAWAY).
  absl::Duration max_connection_idle = absl::Minutes(5);
  // A connection that has not finished its (TLS) handshake by then is closed.
  absl::Duration handshake_timeout = absl::Seconds(10);
  // Largest message accepted (a FinishedImage of a 2048x2048 image is ~13 MB;
  // a Submit's spec_json up to 32 MiB).
  int max_receive_bytes = 40 << 20;
  int max_send_bytes = 64 << 20;
};

// Server pings every keepalive_time to find dead peers; client pings more
// often than kMinClientPingInterval without data are strikes, and a client
// with more than kMaxPingStrikes is disconnected.
inline constexpr absl::Duration kServerKeepaliveTime = absl::Minutes(1);
inline constexpr absl::Duration kServerKeepaliveTimeout = absl::Seconds(20);
inline constexpr absl::Duration kMinClientPingInterval = absl::Seconds(10);
inline constexpr int kMaxPingStrikes = 2;

void ApplyListenerLimits(const ListenerLimits& limits, grpc::ServerBuilder* builder);

// The address to dial to reach a server listening on `listen` (a wildcard
// host becomes loopback) at `port` (the port actually bound).
std::string ProbeAddress(const std::string& listen, int port);

// Whether a listen address ("HOST:PORT") is reachable from this host only:
// 127.0.0.0/8, ::1 or localhost. A wildcard or any other host is not.
bool IsLoopbackListenAddress(const std::string& listen);

// One grpc.health.v1.Health/Check (service "") on a fresh connection of its
// own: OK when the server answers SERVING within `timeout`.
absl::Status CheckHealth(const std::string& address, const std::shared_ptr<grpc::ChannelCredentials>& creds,
                         absl::Duration timeout);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_LISTENER_LIMITS_H_
