#include "coordinator/worker_sessions.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"

namespace sdfarm::coordinator {

std::string NewSessionSecret() {
  uint8_t bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // No kernel randomness: no secret can be made; this is not recoverable.
      std::perror("sdfarm-coordinator: getrandom");
      std::abort();
    }
    got += static_cast<size_t>(n);
  }
  std::string out;
  for (uint8_t b : bytes) absl::StrAppend(&out, absl::Hex(b, absl::kZeroPad2));
  return out;
}

std::string CallSession(const grpc::ServerContextBase& ctx) {
  const auto& md = ctx.client_metadata();
  auto it = md.find(kSessionMetadataKey);
  if (it == md.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace sdfarm::coordinator
