#include "client/local_mode.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/commands.h"
#include "client/grid.h"
#include "client/local_farm_file.h"
#include "client/progress.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "common/status_macros.h"
#include "common/subprocess.h"

namespace sdfarm::client {
namespace fs = std::filesystem;

const BinarySearch& CoordinatorBinary() {
  static const auto* b =
      new BinarySearch{"sdfarm-coordinator", "SDFARM_COORDINATOR_BIN", "../coordinator/sdfarm-coordinator", true, ""};
  return *b;
}

const BinarySearch& WorkerBinary() {
  static const auto* b =
      new BinarySearch{"sdfarm-worker", "SDFARM_WORKER_BIN", "../worker/farm/sdfarm-worker", true, ""};
  return *b;
}

const BinarySearch& RedisBinary() {
  static const auto* b = new BinarySearch{"redis-server", "", "", false,
                                          "sdfarm local runs its own Redis; install it: apt-get install redis-server"};
  return *b;
}

namespace {

bool IsExecutableFile(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec) && access(path.c_str(), X_OK) == 0;
}

}  // namespace

std::vector<std::string> BinaryCandidates(const BinarySearch& what, std::string_view env_value,
                                          const std::string& self_dir, std::string_view path_env) {
  std::vector<std::string> out;
  if (!what.env_var.empty() && !env_value.empty()) out.emplace_back(env_value);
  if (!self_dir.empty()) {
    if (what.next_to_self) out.push_back((fs::path(self_dir) / what.name).string());
    if (!what.build_tree_path.empty()) {
      out.push_back((fs::path(self_dir) / what.build_tree_path).lexically_normal().string());
    }
  }
  for (size_t start = 0; start <= path_env.size();) {
    size_t colon = path_env.find(':', start);
    if (colon == std::string_view::npos) colon = path_env.size();
    const std::string_view dir = path_env.substr(start, colon - start);
    if (!dir.empty()) out.push_back((fs::path(std::string(dir)) / what.name).string());
    start = colon + 1;
  }
  return out;
}

absl::StatusOr<std::string> LocateBinary(const BinarySearch& what, std::string_view env_value,
                                         const std::string& self_dir, std::string_view path_env) {
  if (!what.env_var.empty() && !env_value.empty() && !IsExecutableFile(std::string(env_value))) {
    return absl::NotFoundError(absl::StrCat(what.env_var, "=", std::string(env_value), " is not an executable file"));
  }
  for (const std::string& candidate : BinaryCandidates(what, env_value, self_dir, path_env)) {
    if (IsExecutableFile(candidate)) return candidate;
  }
  std::vector<std::string> places;
  if (!what.env_var.empty()) places.push_back("$" + what.env_var);
  if (what.next_to_self && !self_dir.empty()) places.push_back(self_dir);
  if (!what.build_tree_path.empty() && !self_dir.empty()) {
    places.push_back((fs::path(self_dir) / what.build_tree_path).parent_path().lexically_normal().string());
  }
  places.push_back("PATH");
  std::string message = absl::StrCat("cannot find ", what.name, " (looked in ", absl::StrJoin(places, ", "), ")");
  if (!what.hint.empty()) {
    absl::StrAppend(&message, "; ", what.hint);
  } else if (!what.env_var.empty()) {
    absl::StrAppend(&message, "; build it, or set ", what.env_var, " to its path");
  }
  return absl::NotFoundError(message);
}

std::string SelfDirectory() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? "" : self.parent_path().string();
}

absl::StatusOr<std::string> LocalModelName(std::string_view model_dir, std::string_view model_name,
                                           std::string_view engine) {
  std::string name(model_name);
  const char* source = "--model-name";
  if (name.empty() && !model_dir.empty()) {
    std::error_code ec;
    fs::path dir = fs::weakly_canonical(fs::path(std::string(model_dir)), ec);
    if (ec) dir = fs::path(std::string(model_dir)).lexically_normal();
    if (!dir.has_filename()) dir = dir.parent_path();
    name = dir.extension() == ".safetensors" ? dir.stem().string() : dir.filename().string();
    source = "the model's folder or file name";
  }
  if (name.empty() && engine.starts_with("synthetic")) return std::string("synthetic");
  if (name.empty()) return absl::InvalidArgumentError("--model DIR is required (or --engine synthetic:MS)");
  bool valid = name.size() <= 100 && name[0] != '.';
  for (char c : name) {
    valid = valid && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  }
  if (!valid) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, " \"", name,
                     "\" is not a valid model name (up to 100 letters, digits, '.', '_', '-', not starting with '.')",
                     model_name.empty() ? "; give one with --model-name" : ""));
  }
  return name;
}

// The model's own image side, from its unet and vae configs (the diffusers
// folder, or --model-config for a single file); 0 when they cannot tell.
int NativeSide(const std::string& model, const std::string& model_config) {
  const fs::path dir = fs::path(model).extension() == ".safetensors" ? fs::path(model_config) : fs::path(model);
  if (dir.empty()) return 0;
  auto read = [](const fs::path& file) {
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    return nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  };
  const nlohmann::json unet = read(dir / "unet" / "config.json");
  const nlohmann::json vae = read(dir / "vae" / "config.json");
  if (!unet.is_object()) return 0;
  // diffusers' defaults: sample_size 64 for the configs of before it was written.
  int sample = 64;
  if (unet.contains("sample_size") && unet["sample_size"].is_number_integer()) sample = unet["sample_size"].get<int>();
  int scale = 8;
  if (vae.is_object() && vae.contains("block_out_channels") && vae["block_out_channels"].is_array() &&
      !vae["block_out_channels"].empty()) {
    scale = 1 << (vae["block_out_channels"].size() - 1);
  }
  const int side = sample * scale;
  return side >= 64 && side <= 2048 && side % 8 == 0 ? side : 0;
}

absl::StatusOr<std::pair<std::string, std::string>> ParseGridAxes(std::string_view text) {
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size() ||
      text.find(':', colon + 1) != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--grid: expected ROWS:COLS like seed:guidance, got \"", std::string(text), "\""));
  }
  return std::make_pair(std::string(text.substr(0, colon)), std::string(text.substr(colon + 1)));
}

std::vector<std::string> ExpandBareGrid(std::vector<std::string> args) {
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] != "--grid") continue;
    const bool has_value =
        i + 1 < args.size() && !args[i + 1].starts_with("-") && args[i + 1].find(':') != std::string::npos;
    if (!has_value) args[i] = "--grid=seed:guidance";
  }
  return args;
}

std::string RedisConfig(const std::string& data_dir, int port, const std::string& password) {
  std::string quoted;
  for (char c : data_dir) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c;
  }
  return absl::StrCat(
      "# Written by `sdfarm local` for one run; the data (append-only file) stays in dir.\n"
      "bind 127.0.0.1\n"
      "protected-mode yes\n"
      "port ",
      port,
      "\n"
      "dir \"",
      quoted,
      "\"\n"
      "appendonly yes\n"
      "appendfsync always\n"
      "save \"\"\n"
      "maxmemory-policy noeviction\n"
      "daemonize no\n"
      "logfile \"\"\n"
      "requirepass ",
      password, "\n");
}

std::string LogTail(const std::string& path, int lines) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  constexpr std::streamoff kMaxRead = 64 * 1024;
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > kMaxRead ? size - kMaxRead : 0;
  in.seekg(start);
  std::string text(static_cast<size_t>(size - start), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  std::vector<std::string> all;
  std::istringstream ss(text);
  for (std::string line; std::getline(ss, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    all.push_back(std::move(line));
  }
  if (start > 0 && !all.empty()) all.erase(all.begin());  // cut in the middle
  while (!all.empty() && all.back().empty()) all.pop_back();
  const size_t first = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0;
  std::string out;
  for (size_t i = first; i < all.size(); ++i) absl::StrAppend(&out, "    ", all[i], "\n");
  return out;
}

namespace {

constexpr absl::Duration kWorkerGrace = absl::Seconds(15);
constexpr absl::Duration kServiceGrace = absl::Seconds(10);
constexpr absl::Duration kPoll = absl::Milliseconds(100);
constexpr int kTailLines = 15;

// SIGINT, SIGTERM and SIGHUP, blocked in this thread and in every thread it
// starts afterwards (gRPC's included), and taken synchronously with
// sigtimedwait: no handler runs, so nothing unsafe can happen inside one.
class BlockedSignals {
 public:
  BlockedSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  ~BlockedSignals() {
    // Pending signals would be delivered (and kill us) once unblocked; they
    // have been acted on already.
    while (Wait(absl::ZeroDuration()) != 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  BlockedSignals(const BlockedSignals&) = delete;
  BlockedSignals& operator=(const BlockedSignals&) = delete;

  // Waits up to `timeout` for a signal; the signal, or 0. Doubles as the
  // sleep of every polling loop here, so a Ctrl-C is seen at once.
  int Wait(absl::Duration timeout) {
    const timespec ts = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
    const int sig = sigtimedwait(&set_, nullptr, &ts);
    if (sig <= 0) return 0;
    ++count_;
    if (first_ == 0) first_ = sig;
    return sig;
  }
  int first() const { return first_; }
  int count() const { return count_; }

 private:
  sigset_t set_, old_;
  int first_ = 0;
  int count_ = 0;
};

// Stopped early by a signal: the caller stops everything and exits 130.
absl::Status Interrupted() { return absl::CancelledError("interrupted"); }

uint64_t StableSeed(std::string_view basis) {
  return std::strtoull(Sha256Hex(basis).substr(0, 16).c_str(), nullptr, 16);
}

struct LocalOptions {
  int workers = 1;
  std::string model_dir, engine, device, dtype, batch_size, threads;
  // Passed to every worker as given: single-file hints, LoRA and VAE folders.
  std::vector<std::string> worker_flags;
  fs::path output_root;
  absl::Duration startup_timeout = absl::Seconds(60);
  absl::Duration timeout = absl::Seconds(30);
  std::optional<std::pair<std::string, std::string>> grid;
  bool json = false;
  std::string resume;  // --resume NAME: go on with that earlier sweep (no sweep flags)
  std::string remove;  // --rm NAME: remove that sweep and its folder, render nothing
  std::string model_flag;  // --model as given, for the hints
};

struct Child {
  std::string label;  // "worker 2"
  std::string log;
  std::unique_ptr<Subprocess> process;
  bool reported = false;  // its early exit was told
};

// One run of `sdfarm local`. Owns the children; the destructor stops any
// that are still running (workers, then the coordinator, then Redis).
class LocalRun {
 public:
  LocalRun(LocalOptions options, coordinator::SweepSpec spec, BlockedSignals* signals)
      : options_(std::move(options)), spec_(std::move(spec)), signals_(signals) {
    state_ = options_.output_root / ".sdfarm-local";
    logs_ = state_ / "logs";
  }
  ~LocalRun() { StopAll(); }

  int Run();

 private:
  absl::Status Prepare();
  absl::Status StartRedis();
  absl::Status StartCoordinator();
  absl::Status StartWorkers();
  absl::Status Submit(std::string* sweep_id);
  // Finds --resume's sweep and checks that these workers can render it.
  absl::Status FindResumed(std::string* sweep_id);
  // Lists the earlier unfinished sweeps (held paused by the coordinator) with
  // how to resume or drop them; resumes `sweep_id` if it was held.
  absl::Status ReportHeldSweeps(const std::string& sweep_id);
  // --rm: removes a sweep with only Redis and the coordinator running.
  int RunRemove();
  void PublishAddress();
  // Notes workers that exited; an error when the farm cannot go on.
  absl::Status CheckChildren();
  absl::StatusOr<std::unique_ptr<Subprocess>> Spawn(const std::string& label, std::vector<std::string> argv,
                                                    std::vector<std::pair<std::string, std::string>> env,
                                                    const std::string& log);
  // "<label> exited with code N (log ...)<extra>; its last lines: ..."
  std::string Died(const Child& child, const std::string& extra = "") const;
  void StopAll();
  void Note(const std::string& text);
  int Fail(const absl::Status& status);

  LocalOptions options_;
  coordinator::SweepSpec spec_;
  BlockedSignals* signals_;
  fs::path state_, logs_;
  std::string coordinator_bin_, worker_bin_, redis_bin_;
  int lock_fd_ = -1;
  bool published_ = false;
  std::string client_token_ = RandomRequestId(), worker_token_ = RandomRequestId();
  int redis_port_ = 0, coordinator_port_ = 0;
  std::string redis_password_;
  std::optional<Child> redis_, coordinator_;
  std::vector<Child> workers_;
  std::unique_ptr<Connection> connection_;
  std::unique_ptr<ProgressPrinter> printer_;
};

void LocalRun::Note(const std::string& text) {
  if (printer_) {
    printer_->Note(text);
  } else {
    std::cerr << text << (text.ends_with("\n") ? "" : "\n") << std::flush;
  }
}

int LocalRun::Fail(const absl::Status& status) {
  if (printer_) printer_->Finish();
  if (absl::IsCancelled(status) && signals_->first() != 0) {
    Note("sdfarm: interrupted; stopping the workers (they finish their current job; Ctrl-C again to kill them)");
    StopAll();
    Note(absl::StrCat("sdfarm: stopped. Run the same command again to resume sweep ", spec_.name, "."));
    return kExitInterrupted;
  }
  StopAll();
  return PrintError(status.message());
}

std::string LocalRun::Died(const Child& child, const std::string& extra) const {
  const std::optional<int> code = child.process ? child.process->exit_code() : std::nullopt;
  std::string text =
      absl::StrCat("sdfarm: ", child.label, " exited", code ? absl::StrCat(" with code ", *code) : std::string(),
                   " (log ", child.log, ")", extra);
  const std::string tail = LogTail(child.log, kTailLines);
  if (!tail.empty()) absl::StrAppend(&text, "; its last lines:\n", tail);
  return text;
}

absl::StatusOr<std::unique_ptr<Subprocess>> LocalRun::Spawn(const std::string& label, std::vector<std::string> argv,
                                                            std::vector<std::pair<std::string, std::string>> env,
                                                            const std::string& log) {
  // Keep the previous run's log next to this one's.
  std::error_code ec;
  if (fs::exists(log, ec)) fs::rename(log, log + ".1", ec);
  SpawnOptions spawn;
  spawn.argv = std::move(argv);
  spawn.env = std::move(env);
  spawn.log_file = log;
  spawn.new_process_group = true;  // a terminal's Ctrl-C reaches only sdfarm, which stops them in order
  absl::StatusOr<std::unique_ptr<Subprocess>> process = Subprocess::Spawn(spawn);
  if (!process.ok()) {
    return absl::Status(process.status().code(),
                        absl::StrCat("cannot start ", label, ": ", process.status().message()));
  }
  return process;
}

absl::Status LocalRun::Prepare() {
  const std::string self_dir = SelfDirectory();
  const char* path = std::getenv("PATH");
  const std::string path_env = path ? path : "/usr/local/bin:/usr/bin:/bin";
  auto env = [](const std::string& name) {
    const char* v = name.empty() ? nullptr : std::getenv(name.c_str());
    return std::string(v ? v : "");
  };
  ASSIGN_OR_RETURN(coordinator_bin_,
                   LocateBinary(CoordinatorBinary(), env(CoordinatorBinary().env_var), self_dir, path_env));
  ASSIGN_OR_RETURN(worker_bin_, LocateBinary(WorkerBinary(), env(WorkerBinary().env_var), self_dir, path_env));
  ASSIGN_OR_RETURN(redis_bin_, LocateBinary(RedisBinary(), "", self_dir, path_env));

  std::error_code ec;
  for (const fs::path& dir : {state_ / "redis", logs_}) {
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  }
  // Two runs on one output root would share one Redis data folder.
  const std::string lock = (state_ / "lock").string();
  lock_fd_ = open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return absl::InternalError(absl::StrCat("cannot open ", lock, ": ", std::strerror(errno)));
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("another `sdfarm local` is running on ",
                                                      options_.output_root.string(), " (lock ", lock,
                                                      "); wait for it or use another --output-root"));
  }
  return absl::OkStatus();
}

absl::Status LocalRun::StartRedis() {
  const std::string conf = (state_ / "redis.conf").string();
  const std::string log = (logs_ / "redis.log").string();
  for (int attempt = 0;; ++attempt) {
    ASSIGN_OR_RETURN(redis_port_, PickFreePort());
    redis_password_ = RandomRequestId();
    {
      // The password is in here: owner-only, and never on a command line.
      const int fd = open(conf.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", conf, ": ", std::strerror(errno)));
      fchmod(fd, 0600);
      const std::string text = RedisConfig(fs::absolute(state_ / "redis").string(), redis_port_, redis_password_);
      const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
      close(fd);
      if (!ok) return absl::InternalError(absl::StrCat("cannot write ", conf));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> process, Spawn("redis-server", {redis_bin_, conf}, {}, log));
    redis_ = Child{"redis-server", log, std::move(process)};

    RedisOptions redis_options;
    redis_options.port = redis_port_;
    redis_options.password = redis_password_;
    redis_options.connect_timeout = absl::Seconds(1);
    redis_options.command_timeout = absl::Seconds(2);
    const absl::Time deadline = absl::Now() + options_.startup_timeout;
    absl::Status last = absl::UnavailableError("not started");
    while (true) {
      if (signals_->Wait(kPoll) != 0) return Interrupted();
      if (!redis_->process->running()) break;
      if (WaitForPort(redis_port_, absl::ZeroDuration()).ok()) {
        // Up once it answers PING: while it loads a large append-only file it
        // accepts connections but answers LOADING.
        absl::StatusOr<std::unique_ptr<RedisClient>> client = RedisClient::Connect(redis_options);
        if (client.ok()) {
          absl::StatusOr<RedisReply> pong = (*client)->Command({"PING"});
          if (pong.ok()) return absl::OkStatus();
          last = pong.status();
        } else {
          last = client.status();
        }
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("redis-server did not answer within ",
                                                        absl::FormatDuration(options_.startup_timeout), " (",
                                                        last.message(), "); see ", log));
      }
    }
    // It exited. Another program may have taken the port in between: retry.
    const std::string tail = LogTail(log, kTailLines);
    if (attempt < 2 && tail.find("Address already in use") != std::string::npos) continue;
    Note(Died(*redis_));
    return absl::InternalError("redis-server could not start");
  }
}

absl::Status LocalRun::StartCoordinator() {
  const std::string port_file = (state_ / "coordinator.port").string();
  const std::string log = (logs_ / "coordinator.log").string();
  std::error_code ec;
  fs::remove(port_file, ec);
  std::vector<std::string> argv = {coordinator_bin_,
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--port-file",
                                   port_file,
                                   "--output-root",
                                   options_.output_root.string(),
                                   // Each run renders only what it was asked for.
                                   "--hold-unfinished"};
  // Secrets travel in the environment, never on a command line (ps shows
  // those to every user). Empty values mask the caller's own settings.
  std::vector<std::pair<std::string, std::string>> env = {
      {"SDFARM_REDIS_URL", absl::StrCat("redis://:", redis_password_, "@127.0.0.1:", redis_port_)},
      {"SDFARM_CLIENT_TOKEN", client_token_},
      {"SDFARM_WORKER_TOKEN", worker_token_},
      {"SDFARM_TLS_CERT", ""},
      {"SDFARM_TLS_KEY", ""},
      {"SDFARM_LISTEN", ""},
      {"SDFARM_OUTPUT_ROOT", ""},
  };
  ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> process, Spawn("the coordinator", argv, env, log));
  coordinator_ = Child{"the coordinator", log, std::move(process)};

  const absl::Time deadline = absl::Now() + options_.startup_timeout;
  while (true) {
    if (signals_->Wait(kPoll) != 0) return Interrupted();
    // The file appears (atomically) once the server is serving.
    std::ifstream in(port_file);
    int port = 0;
    if (in >> port && port > 0 && port < 65536) {
      coordinator_port_ = port;
      break;
    }
    if (!coordinator_->process->running()) {
      Note(Died(*coordinator_));
      coordinator_->reported = true;
      return absl::InternalError("the coordinator could not start");
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("the coordinator did not start serving within ",
                                                      absl::FormatDuration(options_.startup_timeout), "; see ", log));
    }
  }
  GlobalOptions globals;
  globals.coordinator = absl::StrCat("127.0.0.1:", coordinator_port_);
  globals.token = client_token_;
  globals.timeout = options_.timeout;
  ASSIGN_OR_RETURN(connection_, Connection::Open(globals));
  PublishAddress();
  return absl::OkStatus();
}

void LocalRun::PublishAddress() {
  // Other shells' `sdfarm status/watch/cancel/...` find the farm by these.
  LocalFarm farm;
  farm.coordinator = absl::StrCat("127.0.0.1:", coordinator_port_);
  farm.token = client_token_;
  farm.output_root = options_.output_root.string();
  farm.pid = getpid();
  for (const fs::path& file : {LocalFarmFile(options_.output_root), UserLocalFarmFile()}) {
    if (absl::Status s = WriteLocalFarm(file, farm); !s.ok()) {
      Note(absl::StrCat("sdfarm: note: other shells cannot find this farm by themselves: ", s.message()));
    }
  }
  published_ = true;
}

absl::Status LocalRun::StartWorkers() {
  const bool synthetic = options_.engine.starts_with("synthetic");
  std::string threads = options_.threads;
  if (threads.empty() && options_.device == "cpu" && !synthetic) {
    // One worker per core share: oversubscribed OpenMP threads make every
    // worker far slower.
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    threads = absl::StrCat(std::max(1u, cores / static_cast<unsigned>(options_.workers)));
  }
  for (int i = 1; i <= options_.workers; ++i) {
    std::vector<std::string> argv = {worker_bin_,    "--coordinator", absl::StrCat("127.0.0.1:", coordinator_port_),
                                     "--model-name", spec_.model,     "--device",
                                     options_.device};
    if (!options_.model_dir.empty()) argv.insert(argv.end(), {"--model", fs::absolute(options_.model_dir).string()});
    if (!options_.engine.empty()) argv.insert(argv.end(), {"--engine", options_.engine});
    if (!options_.batch_size.empty()) argv.insert(argv.end(), {"--batch-size", options_.batch_size});
    if (!options_.dtype.empty()) argv.insert(argv.end(), {"--dtype", options_.dtype});
    if (!threads.empty()) argv.insert(argv.end(), {"--threads", threads});
    argv.insert(argv.end(), options_.worker_flags.begin(), options_.worker_flags.end());
    std::vector<std::pair<std::string, std::string>> env = {
        {"SDFARM_WORKER_TOKEN", worker_token_},
        {"SDFARM_TOKEN", ""},
        {"SDFARM_TLS_CA", ""},
        {"SDFARM_COORDINATOR", ""},
        {"SDFARM_MODEL", ""},
        {"SDFARM_REDIS_URL", ""},
    };
    const std::string label = absl::StrCat("worker ", i);
    const std::string log = (logs_ / absl::StrCat("worker-", i, ".log")).string();
    ASSIGN_OR_RETURN(std::unique_ptr<Subprocess> process, Spawn(label, argv, env, log));
    workers_.push_back(Child{label, log, std::move(process)});
  }
  return absl::OkStatus();
}

absl::Status LocalRun::Submit(std::string* sweep_id) {
  v1::SubmitRequest request;
  // The same spec, the same request id: a re-run finds the sweep it started.
  request.set_request_id(SpecRequestId(spec_));
  request.set_spec_json(spec_.ToJson().dump());
  request.set_wait_for_workers(true);  // ours are starting
  v1::SubmitResponse response;
  absl::Status s = connection_->Unary(
      [&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) { return stub->Submit(ctx, request, &response); });
  if (absl::IsAlreadyExists(s)) {
    // The coordinator's message says the same about its own names.
    return absl::AlreadyExistsError(
        absl::StrCat("a sweep named ", spec_.name, " with other settings already exists under ",
                     options_.output_root.string(), "; choose another --name or --output-root"));
  }
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("the coordinator refused the sweep: ", s.message()));
  for (const std::string& w : response.warnings()) Note("sdfarm: warning: " + w);
  *sweep_id = response.sweep_id();
  return absl::OkStatus();
}

absl::Status LocalRun::FindResumed(std::string* sweep_id) {
  absl::StatusOr<v1::SweepStatus> status = CallStatus(connection_.get(), options_.resume);
  if (absl::IsNotFound(status.status())) {
    return absl::NotFoundError(absl::StrCat("no sweep named ", options_.resume, " under ",
                                            options_.output_root.string(), " (sdfarm ls lists them while a farm runs)"));
  }
  if (!status.ok()) return status.status();
  if (status->model() != spec_.model) {
    return absl::FailedPreconditionError(absl::StrCat("sweep ", status->name(), " is for model ", status->model(),
                                                      "; these workers serve ", spec_.model, " (give its --model)"));
  }
  *sweep_id = status->sweep_id();
  spec_.name = status->name();
  return absl::OkStatus();
}

absl::Status LocalRun::ReportHeldSweeps(const std::string& sweep_id) {
  v1::ListResponse list;
  RETURN_IF_ERROR(connection_->Unary([&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) {
    return stub->List(ctx, v1::ListRequest(), &list);
  }));
  std::vector<const v1::SweepStatus*> held;
  for (const v1::SweepStatus& s : list.sweeps()) {
    if (s.sweep_id() == sweep_id) {
      if (s.state() == v1::PAUSED) {
        v1::SweepRef ref;
        ref.set_sweep(sweep_id);
        v1::SweepStatus resumed;
        RETURN_IF_ERROR(connection_->Unary([&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) {
          return stub->Resume(ctx, ref, &resumed);
        }));
      }
    } else if (s.state() == v1::RUNNING || s.state() == v1::PAUSED) {
      held.push_back(&s);
    }
  }
  if (held.empty()) return absl::OkStatus();
  const std::string root = options_.output_root.string();
  std::string text = absl::StrCat("sdfarm: ", held.size(), " earlier unfinished sweep", held.size() == 1 ? "" : "s",
                                  " in ", root, " wait", held.size() == 1 ? "s" : "", " (paused; this run renders only ",
                                  spec_.name, "):");
  for (const v1::SweepStatus* s : held) {
    absl::StrAppend(&text, "\n  ", s->name(), "  ", s->done(), "/", s->total(), " done, model ", s->model());
  }
  const std::string& example = held.front()->name();
  const std::string model = held.front()->model() == spec_.model && !options_.model_flag.empty()
                                ? options_.model_flag
                                : "<its model>";
  absl::StrAppend(&text, "\n  resume one: sdfarm local --output-root ", root, " --model ", model, " --resume ",
                  example, "\n  drop one:   sdfarm local --output-root ", root, " --rm ", example,
                  "   (deletes its images)");
  Note(text);
  return absl::OkStatus();
}

int LocalRun::RunRemove() {
  if (absl::Status s = Prepare(); !s.ok()) return Fail(s);
  if (absl::Status s = StartRedis(); !s.ok()) return Fail(s);
  if (absl::Status s = StartCoordinator(); !s.ok()) return Fail(s);
  absl::StatusOr<v1::RemoveResponse> removed = CallRemove(connection_.get(), options_.remove, /*keep_files=*/false);
  StopAll();
  if (!removed.ok()) return Fail(removed.status());
  std::cout << DescribeRemoval(*removed, /*keep_files=*/false) << "\n";
  return kExitOk;
}

absl::Status LocalRun::CheckChildren() {
  for (std::optional<Child>* service : {&redis_, &coordinator_}) {
    Child& child = **service;
    if (!child.reported && !child.process->running()) {
      child.reported = true;
      Note(Died(child));
      return absl::InternalError(
          absl::StrCat(child.label, " exited; the sweep cannot go on (logs in ", logs_.string(), ")"));
    }
  }
  int alive = 0;
  for (Child& worker : workers_) {
    if (worker.process->running()) {
      ++alive;
    } else if (!worker.reported) {
      worker.reported = true;
      Note(Died(worker, "; a job it held goes to another worker when its lease runs out"));
    }
  }
  if (alive == 0) {
    return absl::InternalError(absl::StrCat("all ", workers_.size(), " worker", workers_.size() == 1 ? "" : "s",
                                            " exited; nothing can render the sweep (logs in ", logs_.string(), ")"));
  }
  return absl::OkStatus();
}

void LocalRun::StopAll() {
  // Workers first: SIGTERM lets them finish their job and report it while
  // the coordinator and Redis are still up. A further signal kills them now.
  for (Child& w : workers_) {
    if (w.process) (void)w.process->Signal(SIGTERM);
  }
  const int signals_before = signals_->count();
  const absl::Time deadline = absl::Now() + kWorkerGrace;
  while (absl::Now() < deadline && signals_->count() == signals_before) {
    bool any = false;
    for (Child& w : workers_) any = any || (w.process && w.process->running());
    if (!any) break;
    signals_->Wait(kPoll);
  }
  for (Child& w : workers_) {
    if (w.process) w.process->Stop(absl::ZeroDuration());
  }
  connection_.reset();  // the coordinator need not wait for our idle channel
  if (published_) {
    RemoveLocalFarm(LocalFarmFile(options_.output_root), getpid());
    RemoveLocalFarm(UserLocalFarmFile(), getpid());
    published_ = false;
  }
  if (coordinator_ && coordinator_->process) coordinator_->process->Stop(kServiceGrace);
  if (redis_ && redis_->process) redis_->process->Stop(kServiceGrace);
  if (lock_fd_ >= 0) {
    close(lock_fd_);
    lock_fd_ = -1;
  }
}

// Runs the watcher on its own thread and joins it on every path. Lost
// connections are not reported: here the coordinator is a child, and its
// exit is reported with its log.
class WatchThread {
 public:
  WatchThread(Connection* connection, const std::string& sweep_id, ProgressPrinter* printer)
      : watcher_(connection, sweep_id, WatchOptions{}) {
    thread_ = std::thread([this, printer] {
      absl::StatusOr<v1::SweepStatus> result = watcher_.Run(
          [this, printer](const v1::WatchEvent& e) {
            {
              absl::MutexLock lock(&mu_);
              if (!first_done_) first_done_ = e.status().done();
            }
            printer->OnEvent(e, absl::Now());
          },
          [](const std::string&) {});
      absl::MutexLock lock(&mu_);
      result_ = std::move(result);
    });
  }
  ~WatchThread() {
    watcher_.Cancel();
    thread_.join();
  }
  // The watcher's result once it has ended.
  std::optional<absl::StatusOr<v1::SweepStatus>> result() {
    absl::MutexLock lock(&mu_);
    return result_;
  }
  // Images done when watching began (by an earlier run of the same sweep).
  int64_t first_done() {
    absl::MutexLock lock(&mu_);
    return first_done_.value_or(0);
  }

 private:
  SweepWatcher watcher_;
  absl::Mutex mu_;
  std::optional<absl::StatusOr<v1::SweepStatus>> result_ ABSL_GUARDED_BY(mu_);
  std::optional<int64_t> first_done_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

int LocalRun::Run() {
  if (!options_.remove.empty()) return RunRemove();
  if (absl::Status s = Prepare(); !s.ok()) return Fail(s);
  if (absl::Status s = StartRedis(); !s.ok()) return Fail(s);
  if (absl::Status s = StartCoordinator(); !s.ok()) return Fail(s);
  std::string sweep_id;
  if (absl::Status s = options_.resume.empty() ? Submit(&sweep_id) : FindResumed(&sweep_id); !s.ok()) return Fail(s);
  if (absl::Status s = ReportHeldSweeps(sweep_id); !s.ok()) return Fail(s);
  if (absl::Status s = StartWorkers(); !s.ok()) return Fail(s);
  if (signals_->Wait(absl::ZeroDuration()) != 0) return Fail(Interrupted());
  if (!options_.json) {
    std::cout << "sweep " << sweep_id << " (" << spec_.name << "): "
              << (options_.resume.empty() ? absl::StrCat(coordinator::CountImages(spec_), " images")
                                          : std::string("resumed"))
              << " on "
              << options_.workers << " worker" << (options_.workers == 1 ? "" : "s") << "; logs in " << logs_.string()
              << "\n"
              << std::flush;
  }

  printer_ =
      std::make_unique<ProgressPrinter>(DetectProgressMode(options_.json), &std::cout, &std::cerr, TerminalWidth());
  const absl::Time started = absl::Now();
  absl::StatusOr<v1::SweepStatus> final_status = absl::UnknownError("not watched");
  absl::Status stop;
  int64_t done_before = 0;
  {
    // The watcher prints; this thread minds the children and the signals.
    WatchThread watch(connection_.get(), sweep_id, printer_.get());
    while (true) {
      if (signals_->Wait(kPoll) != 0) {
        stop = Interrupted();
        break;
      }
      if (auto result = watch.result()) {
        final_status = std::move(*result);
        break;
      }
      if (stop = CheckChildren(); !stop.ok()) break;
    }
    done_before = watch.first_done();
  }  // the watcher is stopped before any child is
  if (!stop.ok()) return Fail(stop);
  printer_->Finish();
  if (!final_status.ok()) return Fail(final_status.status());
  const absl::Duration wall = absl::Now() - started;

  // Where the images are: the coordinator's answer, on this machine.
  const fs::path sweep_dir =
      final_status->output_dir().empty() ? options_.output_root / spec_.name : fs::path(final_status->output_dir());
  int code = ExitCodeForSweep(*final_status);
  std::vector<std::string> sheets;
  if (options_.grid && final_status->state() == v1::DONE && final_status->done() > 0) {
    GridOptions grid_options;
    grid_options.rows = options_.grid->first;
    grid_options.cols = options_.grid->second;
    absl::StatusOr<GridSummary> grid = MakeGrid(sweep_dir.string(), grid_options);
    if (grid.ok()) {
      sheets = grid->files;
    } else {
      Note(absl::StrCat("sdfarm: error: the contact sheet failed: ", grid.status().message()));
      code = kExitFailure;
    }
  }
  StopAll();

  const double seconds = absl::ToDoubleSeconds(wall);
  const int64_t done = final_status->done();
  const int64_t rendered = std::max<int64_t>(done - done_before, 0);  // by this run
  if (options_.json) {
    std::cout << nlohmann::json{{"summary",
                                 {{"sweep_id", sweep_id},
                                  {"name", spec_.name},
                                  {"state", std::string(StateName(final_status->state()))},
                                  {"images", done},
                                  {"rendered_now", rendered},
                                  {"failed", final_status->failed()},
                                  {"total", final_status->total()},
                                  {"wall_seconds", seconds},
                                  {"output_dir", sweep_dir.string()},
                                  {"metadata", (sweep_dir / "metadata.jsonl").string()},
                                  {"grids", sheets},
                                  {"logs", logs_.string()}}}}
                     .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    std::cout << "sweep " << spec_.name << " " << StateName(final_status->state()) << ": " << done << " image"
              << (done == 1 ? "" : "s") << ", " << final_status->failed() << " failed";
    if (rendered != done) std::cout << " (" << rendered << " rendered by this run)";
    std::cout << " in " << FormatDuration(seconds)
              << (seconds > 0 && rendered > 0 ? absl::StrCat(" (", FormatRate(rendered / seconds), " images/s)") : "")
              << "\n"
              << "  images:    " << sweep_dir.string() << "/\n"
              << "  metadata:  " << (sweep_dir / "metadata.jsonl").string() << "\n";
    for (const std::string& sheet : sheets) std::cout << "  grid:      " << sheet << "\n";
    std::cout << "  logs:      " << logs_.string() << "/\n" << std::flush;
  }
  if (code == kExitSweepFailed) {
    std::cerr << "sdfarm: " << final_status->failed() << " image" << (final_status->failed() == 1 ? "" : "s")
              << " failed; the errors are in " << logs_.string() << "/worker-*.log\n";
  } else if (code == kExitSweepCancelled) {
    std::cerr << "sdfarm: the sweep was cancelled\n";
  }
  return code;
}

}  // namespace

int RunLocal(const std::vector<std::string>& raw_args) {
  const std::vector<std::string> args = ExpandBareGrid(raw_args);
  tools::CliFlags flags("sdfarm local",
                        "Runs a sweep on this machine: starts redis-server, a coordinator and N workers as child "
                        "processes,\nshows live progress, and stops them all at the end or on Ctrl-C.");
  flags.Add("workers", "N", "worker processes", "1");
  flags.Add("model", "PATH",
            "the model the workers load: a diffusers folder or a single-file .safetensors checkpoint; its name "
            "is the sweep's model");
  flags.SetEnv("model", "SDFARM_MODEL");
  flags.Add("model-name", "NAME",
            "serve the model under this name (default: the folder's name or file's stem, or \"synthetic\")");
  flags.Add("model-config", "DIR", "single file: its configs, tokenizer and scheduler from this diffusers folder");
  flags.Add("original-config", "YAML", "single file: its original LDM config (default: <file>.yaml beside it)");
  flags.Add("prediction-type", "TYPE", "single file: epsilon or v_prediction, when the file cannot tell");
  flags.AddBool("ema", "single file: use its EMA UNet weights");
  flags.Add("lora-dir", "DIR", "where the workers find the LoRAs --lora names (<DIR>/<name>.safetensors)");
  flags.SetEnv("lora-dir", "SDFARM_LORA_DIR");
  flags.Add("vae-dir", "DIR", "where the workers find the VAE --vae names (<DIR>/<name>.safetensors)");
  flags.SetEnv("vae-dir", "SDFARM_VAE_DIR");
  AddSweepFlags(&flags, /*model_flag=*/false);
  flags.Add("output-root", "DIR", "images go to DIR/<name>/; local state (Redis data, logs) to DIR/.sdfarm-local/",
            "sdfarm-out");
  flags.SetEnv("output-root", "SDFARM_OUTPUT_ROOT");
  flags.Add("engine", "synthetic:MS", "no model: each step sleeps MS ms and images are a test pattern (farm tests)");
  flags.Add("device", "DEV", "the workers' device: cpu, cuda, cuda:1, ...", "cpu");
  flags.Add("dtype", "T", "the workers' dtype: fp32, fp16 or bf16 (default: fp32 on cpu, fp16 on cuda)");
  flags.Add("threads", "N", "CPU threads per worker (default on cpu: cores / workers)");
  flags.Add("batch-size", "N", "images per engine call (default: the worker's)");
  flags.Add("grid", "ROWS:COLS", "then make a contact sheet; a bare --grid is seed:guidance");
  flags.AddBool("json", "print watch events and a final summary as JSON lines");
  flags.Add("resume", "NAME", "go on with an earlier unfinished sweep of this output root (no sweep flags)");
  flags.Add("rm", "NAME", "remove an earlier sweep of this output root and delete its folder; renders nothing");
  flags.Add("startup-timeout", "SECONDS", "for redis-server and the coordinator to come up", "60");
  flags.Add("timeout", "SECONDS", "per call to the coordinator", "30");
  flags.SetEpilog(
      "Examples:\n"
      "  sdfarm local --workers 2 --model models/sd15 --prompt \"a red fox in the snow\" \\\n"
      "      --seeds 0-3 --guidance 3,7.5 --grid\n"
      "  sdfarm local --model models/sd15 --file fox.yaml --output-root renders\n"
      "  sdfarm local --workers 2 --engine synthetic:5 --prompt a --seeds 0-3 --guidance 1,7.5 --size 64x64\n\n"
      "Programs: sdfarm-coordinator and sdfarm-worker are taken from $SDFARM_COORDINATOR_BIN /\n"
      "$SDFARM_WORKER_BIN, else next to sdfarm, else from the build tree (../coordinator,\n"
      "../worker/farm), else PATH; redis-server from PATH (apt-get install redis-server).\n\n"
      "Ctrl-C stops the workers (they finish their current job within 15 s; Ctrl-C again kills\n"
      "them), then the coordinator and Redis. Run the same command again to resume: the sweep is\n"
      "named after a hash of its settings (or --name), random:N seeds are drawn from a hash of\n"
      "--seeds, and its state is kept in DIR/.sdfarm-local/redis. Reusing a --name with other\n"
      "settings is refused.\n\n"
      "A run renders only the sweep it was given: earlier unfinished sweeps of the same output\n"
      "root stay paused and are listed, with how to go on with one (--resume NAME) or drop it\n"
      "(--rm NAME).\n\n"
      "While it runs, the other commands reach it from another shell by themselves (sdfarm status,\n"
      "watch, workers, pause, cancel, rm): its address and client token are in\n"
      "DIR/.sdfarm-local/farm.json and ~/.local/state/sdfarm/local-farm.json (owner-only, removed\n"
      "at exit).\n\n"
      "Exit codes: 0 done; 3 done with failed images; 4 cancelled (sdfarm cancel from another\n"
      "shell); 1 errors (a program missing or exiting, all workers dead, ...); 2 bad flags;\n"
      "130 interrupted.\n");
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  auto usage = [](absl::string_view message) {
    std::cerr << "sdfarm: error: " << message << " (see 'sdfarm local --help')\n";
    return kExitUsage;
  };
  if (!flags.positional().empty()) return usage("unexpected argument \"" + flags.positional()[0] + "\"");

  LocalOptions options;
  auto workers = flags.GetInt("workers", 1, 256);
  if (!workers.ok()) return usage(workers.status().message());
  options.workers = static_cast<int>(*workers);
  options.model_dir = flags.Get("model");
  options.engine = flags.Get("engine");
  options.device = flags.Get("device");
  options.dtype = flags.Get("dtype");
  options.threads = flags.Get("threads");
  options.batch_size = flags.Get("batch-size");
  options.json = flags.GetBool("json");
  for (const char* f : {"model-config", "original-config", "prediction-type", "lora-dir", "vae-dir"}) {
    if (!flags.Has(f)) continue;
    std::string value = flags.Get(f);
    std::error_code path_ec;
    if (std::string_view(f) != "prediction-type") value = fs::absolute(value, path_ec).string();
    options.worker_flags.insert(options.worker_flags.end(), {absl::StrCat("--", f), value});
  }
  if (flags.GetBool("ema")) options.worker_flags.push_back("--ema");
  if (!options.engine.empty() && !options.engine.starts_with("synthetic:")) {
    return usage("--engine: expected synthetic:MS, got \"" + options.engine + "\"");
  }
  if (!options.threads.empty()) {
    if (auto t = flags.GetInt("threads", 1, 1024); !t.ok()) return usage(t.status().message());
  }
  if (!options.batch_size.empty()) {
    if (auto b = flags.GetInt("batch-size", 1, 1024); !b.ok()) return usage(b.status().message());
  }
  if (!options.model_dir.empty() && options.engine.empty()) {
    std::error_code ec;
    const bool single_file = fs::path(options.model_dir).extension() == ".safetensors";
    if (single_file ? !fs::is_regular_file(options.model_dir, ec) : !fs::is_directory(options.model_dir, ec)) {
      return usage(absl::StrCat("--model: no ", single_file ? "file" : "folder", " \"", options.model_dir, "\""));
    }
  }
  absl::StatusOr<std::string> model_name =
      flags.Has("rm") ? std::string("none") : LocalModelName(options.model_dir, flags.Get("model-name"), options.engine);
  if (!model_name.ok()) return usage(model_name.status().message());
  auto startup = flags.GetDouble("startup-timeout", 1, 3600);
  if (!startup.ok()) return usage(startup.status().message());
  options.startup_timeout = absl::Seconds(*startup);
  auto timeout = flags.GetDouble("timeout", 0.1, 86400);
  if (!timeout.ok()) return usage(timeout.status().message());
  options.timeout = absl::Seconds(*timeout);
  if (flags.Has("grid")) {
    absl::StatusOr<std::pair<std::string, std::string>> axes = ParseGridAxes(flags.Get("grid"));
    if (!axes.ok()) return usage(axes.status().message());
    options.grid = *axes;
  }
  std::error_code ec;
  options.output_root = fs::absolute(flags.Get("output-root"), ec);
  if (ec || flags.Get("output-root").empty())
    return usage("--output-root: bad folder \"" + flags.Get("output-root") + "\"");

  options.resume = flags.Get("resume");
  options.remove = flags.Get("rm");
  options.model_flag = options.model_dir;
  if (!options.resume.empty() || !options.remove.empty()) {
    // The sweep is the stored one: no sweep flags.
    for (const std::string& f : SweepFlagNames()) {
      if (flags.Has(f) || (f == "zip" && flags.GetBool("zip")) || (f == "prompt-chunking" && flags.GetBool(f))) {
        return usage(absl::StrCat("--", f, " cannot go with --", options.remove.empty() ? "resume" : "rm",
                                  " (the sweep's settings are stored)"));
      }
    }
    if (!options.resume.empty() && !options.remove.empty()) return usage("--resume and --rm exclude each other");
    coordinator::SweepSpec spec;
    spec.model = *model_name;
    spec.name = options.remove.empty() ? options.resume : options.remove;
    BlockedSignals signals;
    LocalRun run(std::move(options), std::move(spec), &signals);
    return run.Run();
  }

  SweepDefaults defaults;
  defaults.model = *model_name;
  defaults.name_from_spec = true;
  if (options.engine.empty()) {
    // As diffusers: the model's own size (unet sample_size x the VAE's
    // scale), not a fixed 512x512 (256x256 for the bundled model: seconds a
    // CPU image, where 512x512 takes minutes).
    const int side = NativeSide(options.model_dir, flags.Get("model-config"));
    if (side > 0) defaults.size = absl::StrCat(side, "x", side);
  }
  // random:N must draw the same seeds every time for a re-run to resume.
  std::string basis = flags.Get("seeds");
  if (flags.Has("file")) {
    absl::StatusOr<std::string> text = ReadSmallFile(flags.Get("file"));
    basis = text.ok() ? *text : flags.Get("file");
  }
  defaults.random_seed = StableSeed(basis);
  absl::StatusOr<coordinator::SweepSpec> spec = SpecFromFlags(flags, defaults);
  if (!spec.ok()) return usage(spec.status().message());
  if (spec->model != *model_name) {
    return usage(absl::StrCat("the spec's model \"", spec->model, "\" is not \"", *model_name,
                              "\", the model the local workers serve (set --model-name ", spec->model,
                              " to serve the folder under that name)"));
  }

  // Before any thread exists (gRPC starts its own), so that every thread
  // inherits the mask and the signals are only ever taken by sigtimedwait.
  BlockedSignals signals;
  LocalRun run(std::move(options), *std::move(spec), &signals);
  return run.Run();
}

}  // namespace sdfarm::client
