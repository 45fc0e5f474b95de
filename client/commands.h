// The `sdfarm` command line: global flags, the subcommands that talk to a
// coordinator (submit, watch, status, ls, cancel, pause, resume, workers,
// get) and grid; `local` is in local_mode.h. client_main.cc only calls
// RunCli. The pieces below RunCli are shared with local mode and the tests:
// sweep flags -> SweepSpec, request ids, the coordinator connection with its
// retry policy, the reconnecting sweep watcher, and the path checks of `get`.
//
//   int code = RunCli(argc, argv);   // prints results to stdout, one "sdfarm: error: ..." line to stderr
//
// Exit codes: see kExit* below; `sdfarm --help` lists them too.
#ifndef SDFARM_CLIENT_COMMANDS_H_
#define SDFARM_CLIENT_COMMANDS_H_

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/sweep_spec.h"
#include "sdfarm.grpc.pb.h"
#include "worker/tools/cli_flags.h"

namespace sdfarm::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;         // an error (unreachable coordinator, unknown sweep, ...)
inline constexpr int kExitUsage = 2;           // bad flags or arguments; nothing was done
inline constexpr int kExitSweepFailed = 3;     // the sweep finished, some images failed
inline constexpr int kExitSweepCancelled = 4;  // the sweep was cancelled
// Redis lost the sweep's state and the coordinator could not rebuild it
// (SweepStatus.state_lost): `sdfarm adopt NAME` once the cause is fixed.
inline constexpr int kExitSweepStateLost = 5;
inline constexpr int kExitInterrupted = 130;   // Ctrl-C (local mode)

// The whole command line: argv[1] onwards is `[global flags] <command> [flags] [args]`.
int RunCli(int argc, char** argv);

// ---------------------------------------------------------------- shared --

// Prints "sdfarm: error: <message>" (one line) to stderr and returns `code`.
int PrintError(absl::string_view message, int code = kExitFailure);

// Parses `args` (args[0] is the program name shown in usage) into `flags`.
// Returns -1 to go on, or the exit code to return now: 0 after printing
// --help, kExitUsage after printing the error.
int ParseFlags(tools::CliFlags* flags, const std::vector<std::string>& args);

// --coordinator, --token, --tls-ca, --timeout (with their environment variables).
struct GlobalOptions {
  std::string coordinator = "127.0.0.1:7733";
  std::string token;
  std::string tls_ca;
  absl::Duration timeout = absl::Seconds(30);  // per unary call, retries included
  // How long calls retry a coordinator that has never answered this process
  // (a wrong address, a farm that is not running): a clear error soon.
  absl::Duration first_contact_timeout = absl::Seconds(5);
  std::string local_farm_root;  // set when the address came from a running `sdfarm local`
};
void AddGlobalFlags(tools::CliFlags* flags);
absl::StatusOr<GlobalOptions> GlobalsFromFlags(const tools::CliFlags& flags);

// The sweep flags of `submit` and `local` (--name, --prompt, --seeds, ...,
// --file). `model_flag`: whether --model NAME is one of them (local mode
// uses --model for the model folder instead).
void AddSweepFlags(tools::CliFlags* flags, bool model_flag);

struct SweepDefaults {
  std::string model;  // used when --model is not a sweep flag or not given
  absl::Time now = absl::Now();
  absl::TimeZone zone = absl::LocalTimeZone();
  uint64_t random_seed = 0;  // draws the seeds of random:N
  // Default name "<model>-<hash of the spec>" instead of "<model>-<time>", so
  // that the same flags always describe the same sweep (local mode resumes).
  bool name_from_spec = false;
  // Used when --size is not given (flags only): "WxH"; empty: the spec's default.
  std::string size;
};

// Builds and validates (the coordinator's rules) the spec from the sweep
// flags, or reads --file. Errors name the flag: "--size: ...".
absl::StatusOr<coordinator::SweepSpec> SpecFromFlags(const tools::CliFlags& flags, const SweepDefaults& defaults);

// "<model>-YYYYmmdd-HHMMSS" in `zone`, the model cut so the name fits 100 characters.
std::string DefaultSweepName(std::string_view model, absl::Time now, absl::TimeZone zone);

// Lower-case hex SHA-256.
std::string Sha256Hex(std::string_view data);
// 128 random bits as 32 hex digits: one per `submit` invocation.
std::string RandomRequestId();
// 32 hex digits that depend only on the spec: the same spec, the same sweep.
std::string SpecRequestId(const coordinator::SweepSpec& spec);

// The checks `get` applies to every path the coordinator sends: relative,
// no "." or ".." component, no empty component, no NUL or backslash.
absl::Status CheckRemotePath(std::string_view path);
// A sweep name used as a local folder: one plain component.
absl::Status CheckFolderName(std::string_view name);

// Writes a Get stream into a folder: each file goes to "<path>.sdfarm-part"
// and is renamed when its last chunk arrives; chunks must come in order.
// Files left incomplete are removed by Finish and the destructor.
class ChunkWriter {
 public:
  explicit ChunkWriter(std::filesystem::path dir) : dir_(std::move(dir)) {}
  ~ChunkWriter();
  ChunkWriter(const ChunkWriter&) = delete;
  ChunkWriter& operator=(const ChunkWriter&) = delete;

  absl::Status Write(const v1::FileChunk& chunk);
  // DataLoss when a file never got its last chunk.
  absl::Status Finish();

  const std::vector<std::string>& files() const { return files_; }  // completed, in order
  int64_t bytes() const { return bytes_; }

 private:
  struct Open {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file{nullptr, &std::fclose};
    std::filesystem::path temp, target;
    int64_t size = 0;
  };
  void Discard();

  std::filesystem::path dir_;
  std::map<std::string, Open> open_;
  std::set<std::string> completed_;
  std::vector<std::string> files_;
  int64_t bytes_ = 0;
};

// A ClientService stub with the caller's token and timeout.
class Connection {
 public:
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const GlobalOptions& options);

  // Runs `call` with a fresh context (token, deadline) and retries while the
  // coordinator is UNAVAILABLE, with backoff, until the timeout. Errors come
  // back with a hint (Explain).
  absl::Status Unary(const std::function<grpc::Status(v1::ClientService::Stub*, grpc::ClientContext*)>& call);

  // Adds what to do about unreachable coordinators and refused tokens.
  absl::Status Explain(const absl::Status& status) const;

  v1::ClientService::Stub* stub() { return stub_.get(); }
  const GlobalOptions& options() const { return options_; }
  bool answered() const { return answered_; }

 private:
  Connection(GlobalOptions options, std::unique_ptr<v1::ClientService::Stub> stub)
      : options_(std::move(options)), stub_(std::move(stub)) {}

  GlobalOptions options_;
  std::unique_ptr<v1::ClientService::Stub> stub_;
  bool warned_unavailable_ = false;
  bool answered_ = false;  // the coordinator has answered a call of this connection
};

struct WatchOptions {
  // How long the coordinator may be unreachable before giving up.
  absl::Duration reconnect_timeout = absl::Seconds(300);
  // Each stream is reopened after this long, so a silently dead connection
  // cannot block forever; the reopened stream repeats the current status.
  absl::Duration stream_timeout = absl::Seconds(60);
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(2);
};

// Follows one sweep's Watch stream until it is DONE or CANCELLED (or its
// state is lost for good: state_lost), reconnecting on UNAVAILABLE and
// broken streams.
class SweepWatcher {
 public:
  SweepWatcher(Connection* connection, std::string sweep, WatchOptions options)
      : connection_(connection), sweep_(std::move(sweep)), options_(options) {}

  // Blocks. Returns the final status; Cancelled after Cancel(); NotFound,
  // Unauthenticated, ... at once; DeadlineExceeded after reconnect_timeout
  // without the coordinator. `on_note` hears about lost connections.
  absl::StatusOr<v1::SweepStatus> Run(const std::function<void(const v1::WatchEvent&)>& on_event,
                                      const std::function<void(const std::string&)>& on_note);
  // Makes Run return soon. Thread-safe.
  void Cancel();

 private:
  Connection* const connection_;
  const std::string sweep_;
  const WatchOptions options_;
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* active_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// The exit code for a sweep's final status: 0, kExitSweepFailed, kExitSweepCancelled or kExitSweepStateLost.
int ExitCodeForSweep(const v1::SweepStatus& status);

// The sweep flags' names ("file", "name", "prompt", "seeds", ...; not "model").
std::vector<std::string> SweepFlagNames();
// A sweep's status (retried as Connection::Unary does).
absl::StatusOr<v1::SweepStatus> CallStatus(Connection* conn, const std::string& sweep);
// `sdfarm rm`: forgets a sweep (and deletes its folder unless keep_files).
absl::StatusOr<v1::RemoveResponse> CallRemove(Connection* conn, const std::string& sweep, bool keep_files);
// "removed sweep ID (NAME) and its folder DIR (N files and folders)".
std::string DescribeRemoval(const v1::RemoveResponse& removed, bool keep_files);

}  // namespace sdfarm::client

#endif  // SDFARM_CLIENT_COMMANDS_H_
