// A real redis-server for tests: started from PATH on a free loopback port,
// with its own data folder in a fresh temp dir (AOF on), stopped and cleaned
// up by the destructor.
//
//   absl::StatusOr<std::unique_ptr<RedisServer>> server = RedisServer::Start();
//   ASSERT_TRUE(server.ok()) << server.status();   // missing redis-server fails, never skips
//   auto client = RedisClient::Connect((*server)->client_options());
//   ...
//   ASSERT_TRUE((*server)->Kill().ok());      // crash: SIGKILL
//   ASSERT_TRUE((*server)->Restart().ok());   // same port and data dir: the AOF is reloaded
//
// The server is a child of the test process and gets SIGKILL if the test
// process dies, so a crashed test leaves no redis-server behind.
#ifndef SDFARM_TESTS_COMMON_REDIS_SERVER_FIXTURE_H_
#define SDFARM_TESTS_COMMON_REDIS_SERVER_FIXTURE_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/redis_client.h"

namespace sdfarm::testing {

struct RedisServerOptions {
  std::string password;          // requirepass; empty: none
  std::string maxmemory_policy;  // empty: the server's default (noeviction)
  bool appendfsync_always = true;  // false: everysec
  absl::Duration start_timeout = absl::Seconds(10);
  absl::Duration stop_timeout = absl::Seconds(10);  // SIGTERM grace before SIGKILL
};

class RedisServer {
 public:
  // FailedPrecondition when redis-server is not on PATH; Internal with the
  // tail of the server's log when it does not come up.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(RedisServerOptions options = {});

  ~RedisServer();  // Stop(), then removes the data dir
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  // SIGTERM, wait up to stop_timeout, then SIGKILL. No-op when not running.
  absl::Status Stop();
  // SIGKILL: a crash. Writes fsynced to the AOF survive.
  absl::Status Kill();
  // Stops it if running, then starts it again on the same port and data dir.
  absl::Status Restart();

  bool running() const { return pid_ > 0; }
  int port() const { return port_; }
  const std::string& data_dir() const { return data_dir_; }
  // Options for RedisClient::Connect, with the password set.
  RedisOptions client_options() const;
  std::string url() const;

 private:
  explicit RedisServer(RedisServerOptions options) : options_(std::move(options)) {}
  absl::Status Spawn();          // fork/exec on port_
  absl::Status WaitUntilReady(); // PING answers, or the child exited, or the deadline
  std::string LogTail() const;

  RedisServerOptions options_;
  std::string binary_;
  std::string data_dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace sdfarm::testing

#endif  // SDFARM_TESTS_COMMON_REDIS_SERVER_FIXTURE_H_
