// `sdfarm local`: the whole farm on this machine for one sweep. Starts
// redis-server (on a free loopback port, password-protected, its append-only
// data under <output root>/.sdfarm-local/redis), a coordinator and N workers
// as child processes in their own process groups, submits the sweep, shows
// live progress, makes the contact sheet when asked, prints where everything
// is, and stops every child on every exit path (Ctrl-C included: workers get
// SIGTERM and up to 15 s to finish their job, then the coordinator, then
// Redis).
//
// Re-running the same command resumes the same sweep: the request id is a
// hash of the canonical spec, the default name is "<model>-<hash>", and
// random:N seeds are drawn from a hash of the command's seeds (or spec file),
// so the same command always describes the same sweep, whose state survives
// in Redis's append-only file.
//
//   int code = RunLocal({"sdfarm local", "--workers", "2", "--model", "models/sd15", "--prompt", "a fox",
//                        "--seeds", "0-3", "--guidance", "3,7.5", "--grid"});
//
// The rest of this header is the pure part, for tests.
#ifndef SDFARM_CLIENT_LOCAL_MODE_H_
#define SDFARM_CLIENT_LOCAL_MODE_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sdfarm::client {

// args[0] is the program name for usage ("sdfarm local").
int RunLocal(const std::vector<std::string>& args);

// Where local mode looks for one program.
struct BinarySearch {
  std::string name;             // file name, e.g. "sdfarm-coordinator"
  std::string env_var;          // an override, e.g. "SDFARM_COORDINATOR_BIN"; empty: none
  std::string build_tree_path;  // relative to sdfarm's folder in a build tree; empty: none
  bool next_to_self = true;     // look in sdfarm's own folder
  std::string hint;             // appended to the not-found error
};
const BinarySearch& CoordinatorBinary();  // $SDFARM_COORDINATOR_BIN, ../coordinator/sdfarm-coordinator
const BinarySearch& WorkerBinary();       // $SDFARM_WORKER_BIN, ../worker/farm/sdfarm-worker
const BinarySearch& RedisBinary();        // PATH only

// The paths tried, in order: the environment override (when set), next to
// sdfarm, the build-tree layout, then every PATH entry.
std::vector<std::string> BinaryCandidates(const BinarySearch& what, std::string_view env_value,
                                          const std::string& self_dir, std::string_view path_env);
// The first candidate that is an executable regular file. An override that
// is not one is an error of its own (a typo must not fall back silently).
absl::StatusOr<std::string> LocateBinary(const BinarySearch& what, std::string_view env_value,
                                         const std::string& self_dir, std::string_view path_env);
// The folder of the running executable (from /proc/self/exe).
std::string SelfDirectory();

// The model name local workers serve, which is the sweep's model:
// --model-name, else the model folder's name, else "synthetic" for the
// synthetic engine. InvalidArgument when it is not a valid model name.
absl::StatusOr<std::string> LocalModelName(std::string_view model_dir, std::string_view model_name,
                                           std::string_view engine);

// "seed:guidance" -> {"seed", "guidance"}.
absl::StatusOr<std::pair<std::string, std::string>> ParseGridAxes(std::string_view text);
// A bare `--grid` (last, or followed by a flag) becomes `--grid=seed:guidance`.
std::vector<std::string> ExpandBareGrid(std::vector<std::string> args);

// redis.conf for local mode: loopback only, append-only with fsync on every
// write, no RDB snapshots, no eviction, a password.
std::string RedisConfig(const std::string& data_dir, int port, const std::string& password);

// The last `lines` lines of a log (its last 64 KiB at most), each indented by
// four spaces; "" when the file cannot be read or is empty.
std::string LogTail(const std::string& path, int lines);

}  // namespace sdfarm::client

#endif  // SDFARM_CLIENT_LOCAL_MODE_H_
