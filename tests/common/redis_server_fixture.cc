#include "tests/common/redis_server_fixture.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/subprocess.h"

namespace sdfarm::testing {
absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(RedisServerOptions options) {
  std::unique_ptr<RedisServer> server(new RedisServer(std::move(options)));
  server->binary_ = FindExecutable("redis-server");
  if (server->binary_.empty()) {
    return absl::FailedPreconditionError(
        "redis-server is not on PATH; the Redis tests need a real server (Debian: apt-get install "
        "redis-server, or scripts/setup)");
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/sdfarm-redis-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", templ, ": ", std::strerror(errno)));
  }
  server->data_dir_ = templ;

  absl::Status last;
  for (int attempt = 0; attempt < 5; ++attempt) {
    ASSIGN_OR_RETURN(server->port_, PickFreePort());
    last = server->Spawn();
    if (last.ok()) last = server->WaitUntilReady();
    if (last.ok()) return server;
    (void)server->Kill();
    // Only a lost race for the port is worth another try.
    if (server->LogTail().find("Address already in use") == std::string::npos) break;
  }
  return last;
}

RedisServer::~RedisServer() {
  (void)Stop();
  if (!data_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(data_dir_, ec);
  }
}

absl::Status RedisServer::Spawn() {
  std::vector<std::string> args = {
      binary_,
      "--bind", "127.0.0.1",
      "--port", absl::StrCat(port_),
      "--dir", data_dir_,
      "--logfile", data_dir_ + "/redis.log",
      "--daemonize", "no",
      "--save", "",  // no RDB snapshots: the AOF is what is tested
      "--appendonly", "yes",
      "--appendfsync", options_.appendfsync_always ? "always" : "everysec",
  };
  if (!options_.password.empty()) args.insert(args.end(), {"--requirepass", options_.password});
  if (!options_.maxmemory_policy.empty()) {
    args.insert(args.end(), {"--maxmemory-policy", options_.maxmemory_policy});
  }
  // Everything the child needs is prepared before fork: between fork and exec
  // only async-signal-safe calls are allowed (the test process has threads).
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();

  pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, STDIN_FILENO);
      dup2(devnull, STDOUT_FILENO);
      dup2(devnull, STDERR_FILENO);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;
  return absl::OkStatus();
}

absl::Status RedisServer::WaitUntilReady() {
  const absl::Time deadline = absl::Now() + options_.start_timeout;
  RedisOptions opts = client_options();
  opts.connect_timeout = absl::Milliseconds(200);
  opts.command_timeout = absl::Milliseconds(500);
  absl::Status last = absl::UnavailableError("not tried");
  while (absl::Now() < deadline) {
    int wstatus = 0;
    if (waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(absl::StrCat("redis-server on port ", port_, " exited (status ", wstatus,
                                              ") while starting; log:\n", LogTail()));
    }
    auto client = RedisClient::Connect(opts);
    if (client.ok()) {
      // LOADING (AOF replay) answers with an error until the data is back.
      auto pong = (*client)->Command({"PING"});
      if (pong.ok()) return absl::OkStatus();
      last = pong.status();
    } else {
      last = client.status();
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::InternalError(absl::StrCat("redis-server on port ", port_, " did not answer PING within ",
                                          absl::FormatDuration(options_.start_timeout), " (last: ",
                                          last.ToString(), "); log:\n", LogTail()));
}

absl::Status RedisServer::Stop() {
  if (pid_ <= 0) return absl::OkStatus();
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + options_.stop_timeout;
  while (absl::Now() < deadline) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  absl::Status killed = Kill();
  if (!killed.ok()) return killed;
  return absl::DeadlineExceededError(absl::StrCat("redis-server on port ", port_, " ignored SIGTERM for ",
                                                  absl::FormatDuration(options_.stop_timeout),
                                                  "; killed it"));
}

absl::Status RedisServer::Kill() {
  if (pid_ <= 0) return absl::OkStatus();
  kill(pid_, SIGKILL);
  // SIGKILL cannot be ignored; the wait is short, so it is not bounded further.
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return absl::OkStatus();
}

absl::Status RedisServer::Restart() {
  RETURN_IF_ERROR(Stop());
  RETURN_IF_ERROR(Spawn());
  absl::Status ready = WaitUntilReady();
  if (!ready.ok()) (void)Kill();
  return ready;
}

RedisOptions RedisServer::client_options() const {
  RedisOptions o;
  o.host = "127.0.0.1";
  o.port = port_;
  o.password = options_.password;
  return o;
}

std::string RedisServer::url() const {
  return options_.password.empty() ? absl::StrCat("redis://127.0.0.1:", port_)
                                   : absl::StrCat("redis://:", options_.password, "@127.0.0.1:", port_);
}

std::string RedisServer::LogTail() const {
  std::ifstream in(data_dir_ + "/redis.log");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string log = ss.str();
  return log.size() > 2000 ? log.substr(log.size() - 2000) : log;
}

}  // namespace sdfarm::testing
