#include "tests/farm/tcp_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sdfarm::testing {
namespace {

bool WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

int ConnectLoopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpProxy>> TcpProxy::Start(int target_port) {
  std::unique_ptr<TcpProxy> p(new TcpProxy());
  p->target_port_ = target_port;
  p->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->listen_fd_ < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const int one = 1;
  setsockopt(p->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(p->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(p->listen_fd_, 64) != 0) {
    return absl::InternalError(absl::StrCat("bind/listen: ", std::strerror(errno)));
  }
  socklen_t len = sizeof(addr);
  getsockname(p->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  p->port_ = ntohs(addr.sin_port);
  if (pipe2(p->wake_, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  p->thread_ = std::thread([raw = p.get()] { raw->Loop(); });
  return p;
}

TcpProxy::~TcpProxy() {
  stop_.store(true);
  if (wake_[1] >= 0) (void)!::write(wake_[1], "x", 1);
  if (thread_.joinable()) thread_.join();
  for (int fd : {listen_fd_, wake_[0], wake_[1]}) {
    if (fd >= 0) ::close(fd);
  }
}

std::string TcpProxy::url() const { return absl::StrCat("redis://127.0.0.1:", port_); }

void TcpProxy::Loop() {
  struct Pair {
    int client = -1, upstream = -1;
  };
  std::vector<Pair> pairs;
  auto close_pair = [](Pair& p) {
    if (p.client >= 0) ::close(p.client);
    if (p.upstream >= 0) ::close(p.upstream);
    p.client = p.upstream = -1;
  };
  char buf[64 * 1024];
  while (!stop_.load()) {
    std::vector<pollfd> fds = {{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const Pair& p : pairs) {
      fds.push_back({p.client, POLLIN, 0});
      fds.push_back({p.upstream, POLLIN, 0});
    }
    const size_t polled = pairs.size();  // a pair accepted below has no pollfd yet
    if (::poll(fds.data(), fds.size(), 500) < 0) continue;
    if (fds[0].revents != 0) break;
    if (fds[1].revents & POLLIN) {
      const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        const int u = ConnectLoopback(target_port_);
        if (u < 0) {
          ::close(c);
        } else {
          const int one = 1;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          pairs.push_back({c, u});
        }
      }
    }
    for (size_t i = 0; i < polled; ++i) {
      Pair& p = pairs[i];
      const short crev = fds[2 + 2 * i].revents, urev = fds[3 + 2 * i].revents;
      if (p.client >= 0 && (crev & (POLLIN | POLLHUP | POLLERR))) {
        const ssize_t n = ::recv(p.client, buf, sizeof(buf), 0);
        if (n <= 0 || !WriteAll(p.upstream, buf, static_cast<size_t>(n))) {
          close_pair(p);
          continue;
        }
      }
      if (p.upstream >= 0 && (urev & (POLLIN | POLLHUP | POLLERR))) {
        const ssize_t n = ::recv(p.upstream, buf, sizeof(buf), 0);
        if (n <= 0) {
          close_pair(p);
          continue;
        }
        const int every = drop_every_.load();
        const int count = ++replies_;
        if (drop_next_.exchange(false) || (every > 0 && count % every == 0)) {
          ++dropped_;
          close_pair(p);
          continue;
        }
        if (!WriteAll(p.client, buf, static_cast<size_t>(n))) {
          close_pair(p);
          continue;
        }
        ++forwarded_;
      }
    }
    std::vector<Pair> open;
    for (const Pair& p : pairs) {
      if (p.client >= 0) open.push_back(p);
    }
    pairs.swap(open);
  }
  for (Pair& p : pairs) close_pair(p);
}

}  // namespace sdfarm::testing
