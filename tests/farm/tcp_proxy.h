// A loopback TCP proxy for fault injection between a client and a server
// (the coordinator and Redis, say): it forwards every connection to
// 127.0.0.1:<target port>, and on request breaks a connection at the worst
// moment for a request/reply protocol: after the request went through (the
// server has acted on it), before the reply gets back.
//
//   ASSIGN_OR_RETURN(auto proxy, TcpProxy::Start(redis->port()));
//   auto client = RedisClient::Connect({.port = proxy->port()});
//   proxy->DropNextReply();        // the next reply is swallowed, both sides closed
//   client->Command({"INCR", "n"}); // Unavailable, yet n was incremented
//
// One thread serves every connection; the destructor closes them all.
#ifndef SDFARM_TESTS_FARM_TCP_PROXY_H_
#define SDFARM_TESTS_FARM_TCP_PROXY_H_

#include <atomic>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"

namespace sdfarm::testing {

class TcpProxy {
 public:
  static absl::StatusOr<std::unique_ptr<TcpProxy>> Start(int target_port);
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  std::string url() const;  // redis://127.0.0.1:<port>

  // The next data coming back from the target, on any connection, is not
  // forwarded: that connection is closed on both sides instead.
  void DropNextReply() { drop_next_.store(true); }
  // From now on every n-th reply is dropped that way (0: none).
  void DropEveryNthReply(int n) { drop_every_.store(n); }
  // Replies dropped so far.
  int replies_dropped() const { return dropped_.load(); }
  // Replies forwarded so far.
  int replies_forwarded() const { return forwarded_.load(); }

 private:
  TcpProxy() = default;
  void Loop();

  int port_ = 0;
  int target_port_ = 0;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stop_{false};
  std::atomic<bool> drop_next_{false};
  std::atomic<int> drop_every_{0};
  std::atomic<int> dropped_{0};
  std::atomic<int> forwarded_{0};
  std::atomic<int> replies_{0};
  std::thread thread_;
};

}  // namespace sdfarm::testing

#endif  // SDFARM_TESTS_FARM_TCP_PROXY_H_
