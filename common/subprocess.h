// Child processes for `sdfarm local` and the farm's tests: spawn with extra
// environment and output to a log file, signal, wait with a deadline, stop
// (SIGTERM, grace period, SIGKILL).
//
//   SpawnOptions opts;
//   opts.argv = {"/usr/bin/redis-server", "--port", "6390"};
//   opts.log_file = "out/redis.log";
//   ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> p, Subprocess::Spawn(opts));
//   ...
//   RETURN_IF_ERROR(p->Stop(absl::Seconds(10)));   // also done by the destructor
//
// Children get SIGKILL when the parent dies (PR_SET_PDEATHSIG), unless
// die_with_parent is false, so a crashed parent leaves nothing behind.
// Thread-compatible: one owner per Subprocess.
#ifndef SDFARM_COMMON_SUBPROCESS_H_
#define SDFARM_COMMON_SUBPROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sdfarm {

struct SpawnOptions {
  std::vector<std::string> argv;  // argv[0]: a path, or a name looked up on PATH
  std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing in) the parent's environment
  std::string log_file;      // stdout and stderr appended here; empty: inherited from the parent
  bool die_with_parent = true;
  bool new_process_group = false;  // setpgid(0, 0): a terminal's Ctrl-C does not reach the child
};

class Subprocess {
 public:
  static absl::StatusOr<std::unique_ptr<Subprocess>> Spawn(const SpawnOptions& options);
  ~Subprocess();  // Stop(10 s) when still running
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  // False once the child has been reaped.
  bool running();
  // Sends `sig`; OK when the child is already gone.
  absl::Status Signal(int sig);
  // Waits up to `timeout` for the child to exit; its exit code (128+signal
  // when killed by a signal), or nullopt when it is still running.
  std::optional<int> Wait(absl::Duration timeout);
  // SIGTERM, wait up to `grace`, then SIGKILL and reap. Returns the exit code.
  int Stop(absl::Duration grace);
  // The exit code once reaped.
  std::optional<int> exit_code() const { return exit_code_; }

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  bool Reap(bool block);

  pid_t pid_;
  std::optional<int> exit_code_;
};

// The full path of `name` found on PATH (or `name` itself when it holds a
// '/' and is executable); "" when not found.
std::string FindExecutable(const std::string& name);

// A loopback TCP port that was free a moment ago (another process may still
// take it before the caller binds it).
absl::StatusOr<int> PickFreePort();

// Waits until something accepts TCP connections on 127.0.0.1:port.
absl::Status WaitForPort(int port, absl::Duration timeout);

}  // namespace sdfarm

#endif  // SDFARM_COMMON_SUBPROCESS_H_
