#include "coordinator/listener_limits.h"

#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/resource_quota.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/grpc_util.h"

namespace sdfarm::coordinator {

absl::StatusOr<FileLimit> RaiseFileLimit() {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) {
    return absl::InternalError(absl::StrCat("getrlimit(RLIMIT_NOFILE): ", std::strerror(errno)));
  }
  FileLimit limit{rl.rlim_cur, rl.rlim_cur, rl.rlim_max};
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      return absl::InternalError(absl::StrCat("setrlimit(RLIMIT_NOFILE, ", rl.rlim_max, "): ", std::strerror(errno)));
    }
    limit.now = rl.rlim_max;
  }
  return limit;
}

void ApplyListenerLimits(const ListenerLimits& limits, grpc::ServerBuilder* builder) {
  grpc::ResourceQuota quota("sdfarm-coordinator");
  quota.SetMaxThreads(limits.max_threads);
  quota.Resize(static_cast<size_t>(limits.memory_quota_bytes));
  builder->SetResourceQuota(quota);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, limits.max_streams_per_connection);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(limits.max_connection_idle)));
  builder->AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(limits.handshake_timeout)));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(kServerKeepaliveTime)));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(kServerKeepaliveTimeout)));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(kMinClientPingInterval)));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, kMaxPingStrikes);
  builder->SetMaxReceiveMessageSize(limits.max_receive_bytes);
  builder->SetMaxSendMessageSize(limits.max_send_bytes);
}

std::string ProbeAddress(const std::string& listen, int port) {
  absl::string_view host = listen;
  if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos) host = host.substr(0, colon);
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "[::]" || host == "::") host = "[::1]";
  return absl::StrCat(host, ":", port);
}

bool IsLoopbackListenAddress(const std::string& listen) {
  absl::string_view host = listen;
  if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos) host = host.substr(0, colon);
  if (absl::StartsWith(host, "ipv4:")) host.remove_prefix(5);
  return absl::StartsWith(host, "127.") || host == "localhost" || host == "[::1]" || host == "::1";
}

absl::Status CheckHealth(const std::string& address, const std::shared_ptr<grpc::ChannelCredentials>& creds,
                         absl::Duration timeout) {
  // A channel of its own (no subchannel shared with other channels of this
  // process), so the check makes a new connection: what a stuck accept loop
  // would refuse.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  static std::atomic<int> nonce{0};
  args.SetInt("sdfarm.health_probe", nonce.fetch_add(1));
  auto channel = grpc::CreateCustomChannel(address, creds, args);
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  // HealthCheckRequest{service: ""} is the empty message; the answer
  // HealthCheckResponse{status: SERVING (1)} is the two bytes 08 01.
  grpc::ByteBuffer request, response;
  grpc::Slice empty;
  request = grpc::ByteBuffer(&empty, 1);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = std::move(s);
                   done = true;
                   cv.notify_all();
                 });
  {
    std::unique_lock<std::mutex> lock(mu);
    // The call's own deadline ends it; the extra second only guards against a callback never run.
    cv.wait_until(lock, absl::ToChronoTime(absl::Now() + timeout + absl::Seconds(5)), [&] { return done; });
    if (!done) {
      ctx.TryCancel();
      cv.wait(lock, [&] { return done; });
    }
  }
  if (!status.ok()) return FromGrpc(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("unreadable health check answer");
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes != std::string("\x08\x01", 2)) {
    return absl::UnavailableError(absl::StrCat("the health check answers status ",
                                               bytes.size() == 2 ? static_cast<int>(bytes[1]) : -1,
                                               ", not SERVING"));
  }
  return absl::OkStatus();
}

}  // namespace sdfarm::coordinator
