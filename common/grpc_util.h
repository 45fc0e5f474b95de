// gRPC plumbing shared by the coordinator, the workers and the client:
// channels (TLS when a CA is given), bearer tokens, Status conversion.
//
//   ASSIGN_OR_RETURN(auto channel, MakeChannel("10.0.0.2:7733", /*tls_ca_file=*/""));
//   auto stub = sdfarm::v1::ClientService::NewStub(channel);
//   grpc::ClientContext ctx;
//   PrepareContext(&ctx, token, absl::Seconds(10));     // authorization + deadline
//   grpc::Status s = stub->Status(&ctx, ref, &status);
//   RETURN_IF_ERROR(FromGrpc(s));
#ifndef SDFARM_COMMON_GRPC_UTIL_H_
#define SDFARM_COMMON_GRPC_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sdfarm {

// The metadata key carrying "Bearer <token>".
inline constexpr char kAuthMetadataKey[] = "authorization";
// A worker's session secret (RegisterResponse.session) on every later call.
inline constexpr char kSessionMetadataKey[] = "sdfarm-session";

// A channel to `address` (host:port): TLS verified against the PEM CA bundle
// in `tls_ca_file` when it is non-empty, plaintext otherwise. NotFound /
// InvalidArgument when the CA file cannot be read.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                           const std::string& tls_ca_file);

// Adds the bearer token (when non-empty) and sets the deadline (when > 0).
void PrepareContext(grpc::ClientContext* ctx, const std::string& token, absl::Duration timeout);

// The bearer token a call carries, or "" when it has none.
std::string BearerToken(const grpc::ServerContextBase& ctx);

// Equal strings, compared in time that depends only on their lengths.
bool ConstantTimeEquals(const std::string& a, const std::string& b);

// Status conversion (the codes are the same numbers); messages are kept.
absl::Status FromGrpc(const grpc::Status& status);
grpc::Status ToGrpc(const absl::Status& status);

// Reads a whole (small) file, e.g. a PEM certificate or a token file.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path);

}  // namespace sdfarm

#endif  // SDFARM_COMMON_GRPC_UTIL_H_
