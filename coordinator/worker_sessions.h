// Worker sessions: the secret a registration is known by. Register hands a
// worker a fresh secret; every later worker call carries it as the
// `sdfarm-session` metadata, and the coordinator takes the caller's worker id
// from it, never from the message (docs/farm.md, "Auth").
//
//   const std::string session = NewSessionSecret();   // at Register
//   const std::string presented = CallSession(*ctx);  // in a handler
#ifndef SDFARM_COORDINATOR_WORKER_SESSIONS_H_
#define SDFARM_COORDINATOR_WORKER_SESSIONS_H_

#include <grpcpp/grpcpp.h>

#include <string>

namespace sdfarm::coordinator {

// 128 random bits from the kernel (getrandom), as 32 lowercase hex digits.
std::string NewSessionSecret();

// The session a call carries (metadata kSessionMetadataKey), "" when none.
std::string CallSession(const grpc::ServerContextBase& ctx);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_WORKER_SESSIONS_H_
