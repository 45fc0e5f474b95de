// Limits on what one caller can make the coordinator hold or spend, checked
// at the edge of each call before any work (security findings: a 9.5 MB
// heartbeat cost 13 s of CPU; one client token could queue thousands of
// sweeps for models nobody serves or hold a thousand Watch streams):
//
//   - size caps per message kind: Register, Heartbeat (and its held jobs),
//     step telemetry (with its preview) of a report stream;
//   - per-token quotas, counted by TokenOwner(token), a hash of the bearer
//     token presented (so several client tokens can be configured later and
//     no token is kept in memory or Redis): unfinished sweeps, sweeps for
//     models no live worker serves, Watch streams.
//
// Each refusal names the limit (and its flag, where it has one).
#ifndef SDFARM_COORDINATOR_REQUEST_LIMITS_H_
#define SDFARM_COORDINATOR_REQUEST_LIMITS_H_

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <string>

#include "sdfarm.pb.h"

namespace sdfarm::coordinator {

inline constexpr size_t kMaxRegisterBytes = 64 << 10;
inline constexpr size_t kMaxHeartbeatBytes = 64 << 10;
inline constexpr int kMaxHeldJobs = 16;  // a worker renders one job at a time
inline constexpr size_t kMaxPreviewBytes = 1 << 20;
inline constexpr size_t kMaxTelemetryBytes = kMaxPreviewBytes + (4 << 10);

grpc::Status CheckRegisterRequest(const sdfarm::v1::RegisterRequest& req);
grpc::Status CheckHeartbeatRequest(const sdfarm::v1::HeartbeatRequest& req);
// One message of a report stream; images are checked by png_header_check.h.
grpc::Status CheckReportMessage(const sdfarm::v1::JobReport& msg);

// Per-token quotas (0: no limit).
struct TokenLimits {
  int max_unfinished_sweeps = 1000;  // RUNNING or PAUSED sweeps submitted with the token
  int max_waiting_sweeps = 100;      // of those, sweeps for models no live worker serves
  int max_watchers = 500;            // Watch streams open with the token
};

// "t" + the first 16 hex digits of SHA-256(token); "-" without a token
// (--no-auth).
std::string TokenOwner(const std::string& token);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_REQUEST_LIMITS_H_
