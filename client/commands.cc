#include "client/commands.h"

#include <openssl/sha.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <iostream>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "client/grid.h"
#include "client/local_farm_file.h"
#include "client/local_mode.h"
#include "client/progress.h"
#include "common/grpc_util.h"
#include "common/status_macros.h"

namespace sdfarm::client {
namespace {

using coordinator::SweepSpec;
using Json = nlohmann::json;

// Remote text may hold anything; JSON output must stay valid UTF-8.
std::string DumpJson(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

absl::Status ToAbsl(const engine::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.code()), s.message());
}

std::string_view Trim(std::string_view s) {
  const size_t first = s.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t") - first + 1);
}

std::vector<std::string> SplitList(std::string_view text) {
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t comma = text.find(',', start);
    parts.emplace_back(
        Trim(text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start)));
    if (comma == std::string_view::npos) return parts;
    start = comma + 1;
  }
}

std::string Quote(std::string_view s) {
  std::string shown = absl::CHexEscape(std::string(s.substr(0, 80)));
  if (s.size() > 80) shown += "...";
  return "\"" + shown + "\"";
}

std::string LocalTime(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(unix_ms), absl::LocalTimeZone());
}

// Columns padded to their widest cell; the first row is the header.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

int UsageError(absl::string_view command, absl::string_view message) {
  std::cerr << "sdfarm: error: " << message << " (see 'sdfarm " << command << " --help')\n";
  return kExitUsage;
}

// Exactly one positional argument, e.g. the SWEEP of `status SWEEP`.
bool OnePositional(const tools::CliFlags& flags, absl::string_view command, absl::string_view what, std::string* out,
                   int* code) {
  if (flags.positional().size() != 1) {
    *code = UsageError(command, flags.positional().empty()
                                    ? absl::StrCat("missing ", what)
                                    : absl::StrCat("expected one ", what, ", got ", flags.positional().size()));
    return false;
  }
  *out = flags.positional()[0];
  return true;
}

// ---- sweep flags -> spec ----

// The sweep flags and the spec fields they fill, for --file conflicts and
// for error messages ("sizes[1]: ..." -> "--size: ...").
struct SweepFlag {
  const char* flag;
  const char* field;
};
constexpr SweepFlag kSweepFlags[] = {
    {"name", "name"},
    {"model", "model"},
    {"prompt", "prompts"},
    {"prompts-file", "prompts_file"},
    {"negative-prompt", "negative_prompts"},
    {"negative-prompts-file", "negative_prompts_file"},
    {"seeds", "seeds"},
    {"guidance", "guidance_scales"},
    {"steps", "steps"},
    {"sampler", "samplers"},
    {"size", "sizes"},
    {"images-per-combination", "images_per_combination"},
    {"zip", "combine"},
    {"priority", "priority"},
    {"lora", "loras"},
    {"vae", "vae"},
    {"prompt-chunking", "prompt_chunking"},
    {"prompt-2", "prompts_2"},
    {"negative-prompt-2", "negative_prompts_2"},
    {"original-size", "original_sizes"},
    {"target-size", "target_sizes"},
    {"crop-top-left", "crops_top_left"},
    {"negative-original-size", "negative_original_size"},
    {"negative-target-size", "negative_target_size"},
    {"negative-crop-top-left", "negative_crop_top_left"},
    {"guidance-rescale", "guidance_rescales"},
};

absl::Status ToFlagError(const absl::Status& status) {
  if (status.ok()) return status;
  std::string msg(status.message());
  const size_t end = msg.find_first_of("[.:");
  if (end == std::string::npos) return status;
  const std::string field = msg.substr(0, end);
  for (const SweepFlag& f : kSweepFlags) {
    const std::string singular = std::string(f.field).substr(0, std::strlen(f.field) - 1);
    if (field != f.field && field != singular) continue;
    size_t rest = end;
    if (msg[rest] == '[') {  // the index means nothing on a command line
      const size_t close = msg.find(']', rest);
      if (close != std::string::npos) rest = close + 1;
    }
    return absl::Status(status.code(), absl::StrCat("--", f.flag, msg.substr(rest)));
  }
  return status;
}

absl::StatusOr<std::vector<double>> ParseNumbers(const std::string& flag, const std::string& text) {
  std::vector<double> out;
  for (const std::string& part : SplitList(text)) {
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(part.c_str(), &end);
    if (part.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": bad number ", Quote(part), " (expected a comma list like 1,4,7.5)"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> ParseInts(const std::string& flag, const std::string& text) {
  std::vector<int64_t> out;
  for (const std::string& part : SplitList(text)) {
    int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
    if (part.empty() || ec != std::errc() || ptr != part.data() + part.size() || v < INT_MIN || v > INT_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": bad integer ", Quote(part), " (expected a comma list like 20,30)"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<int64_t> ParseOneInt(const tools::CliFlags& flags, const std::string& flag) {
  ASSIGN_OR_RETURN(std::vector<int64_t> v, ParseInts(flag, flags.Get(flag)));
  if (v.size() != 1) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": expected one integer"));
  return v[0];
}

absl::StatusOr<absl::Duration> SecondsFlag(const tools::CliFlags& flags, const std::string& flag, double max) {
  auto v = flags.GetDouble(flag, 0.001, max);
  if (!v.ok()) return ToAbsl(v.status());
  return absl::Seconds(*v);
}

uint64_t RandomUint64() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// ---- gRPC helpers ----

// Cancels a call when no data has arrived for `idle` (a stream may run long,
// but must not hang on a dead connection).
class IdleWatchdog {
 public:
  IdleWatchdog(grpc::ClientContext* ctx, absl::Duration idle) : ctx_(ctx), idle_(idle), thread_([this] { Loop(); }) {}
  ~IdleWatchdog() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }
  void Kick() {
    absl::MutexLock lock(&mu_);
    last_ = absl::Now();
  }
  bool fired() {
    absl::MutexLock lock(&mu_);
    return fired_;
  }

 private:
  void Loop() {
    absl::MutexLock lock(&mu_);
    while (!stop_) {
      if (mu_.AwaitWithDeadline(absl::Condition(&stop_), last_ + idle_)) return;
      if (absl::Now() >= last_ + idle_) {
        fired_ = true;
        ctx_->TryCancel();
        return;
      }
    }
  }

  grpc::ClientContext* const ctx_;
  const absl::Duration idle_;
  absl::Mutex mu_;
  absl::Time last_ ABSL_GUARDED_BY(mu_) = absl::Now();
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool fired_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};


// Opens the connection or prints why not.
std::unique_ptr<Connection> Connect(const tools::CliFlags& flags, int* code) {
  absl::StatusOr<GlobalOptions> globals = GlobalsFromFlags(flags);
  if (!globals.ok()) {
    *code = PrintError(globals.status().message(), kExitUsage);
    return nullptr;
  }
  absl::StatusOr<std::unique_ptr<Connection>> conn = Connection::Open(*globals);
  if (!conn.ok()) {
    *code = PrintError(conn.status().message());
    return nullptr;
  }
  return std::move(*conn);
}

// Follows a sweep to its end with the progress display; the exit code.
int WatchToEnd(Connection* conn, const std::string& sweep, bool json, absl::Duration reconnect_timeout) {
  ProgressPrinter printer(DetectProgressMode(json), &std::cout, &std::cerr, TerminalWidth());
  WatchOptions options;
  options.reconnect_timeout = reconnect_timeout;
  SweepWatcher watcher(conn, sweep, options);
  absl::StatusOr<v1::SweepStatus> final_status =
      watcher.Run([&](const v1::WatchEvent& event) { printer.OnEvent(event, absl::Now()); },
                  [&](const std::string& note) { printer.Note("sdfarm: " + note); });
  printer.Finish();
  if (!final_status.ok()) return PrintError(final_status.status().message());
  const int code = ExitCodeForSweep(*final_status);
  const std::string name = final_status->name().empty() ? sweep : final_status->name();
  if (code == kExitSweepFailed) {
    std::cerr << "sdfarm: sweep " << name << " finished with " << final_status->failed() << " failed image"
              << (final_status->failed() == 1 ? "" : "s") << " (sdfarm status " << name << ")\n";
  } else if (code == kExitSweepCancelled) {
    std::cerr << "sdfarm: sweep " << name << " was cancelled\n";
  } else if (code == kExitSweepStateLost) {
    std::cerr << "sdfarm: Redis lost the state of sweep " << name
              << " and the coordinator could not rebuild it (sdfarm status " << name
              << " says why); fix that, then: sdfarm adopt " << name << "\n";
  }
  return code;
}

constexpr char kWatchExitCodes[] =
    "Exit codes: 0 when the sweep is DONE with every image, 3 when it is DONE with failed images,\n"
    "4 when it was CANCELLED, 5 when Redis lost the sweep's state and the coordinator could not\n"
    "rebuild it from its folder (sdfarm adopt NAME after fixing the cause; a loss it repaired by\n"
    "itself only adds a warning), 1 on errors (unknown sweep, coordinator gone longer than\n"
    "--reconnect-timeout), 2 on bad flags.\n";

// ---- commands ----

int RunSubmit(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm submit", "Submits a sweep to the coordinator and prints its id and output folder.");
  AddSweepFlags(&flags, /*model_flag=*/true);
  flags.AddBool("dry-run", "validate and count only: images, jobs, an ETA from the live workers' throughput, and the "
                          "models the live workers serve");
  flags.AddBool("wait-for-workers", "accept the sweep although no live worker serves its model yet (it waits for one)");
  flags.AddBool("watch", "then follow the sweep's progress until it ends (exit codes as for 'sdfarm watch')");
  flags.AddBool("json", "print the answer (and, with --watch, the events) as JSON lines");
  flags.Add("reconnect-timeout", "SECONDS", "with --watch: give up after the coordinator is unreachable this long",
            "300");
  AddGlobalFlags(&flags);
  flags.SetEpilog(absl::StrCat(
      "Examples:\n"
      "  sdfarm submit --model sd15 --prompt \"a red fox in the snow\" --seeds 0-99 --guidance 5,7.5\n"
      "  sdfarm submit --model sd15 --prompts-file prompts.txt --seeds random:8 --size 512x512,768x512 --watch\n"
      "  sdfarm submit --model sd15 --prompt a --prompt b --seeds 1,2 --guidance 4,8 --zip --name pairs\n"
      "  sdfarm submit --file fox.yaml --dry-run\n\n"
      "The spec is validated here with the coordinator's rules before it is sent. A sweep file\n"
      "(YAML or JSON, fields in coordinator/sweep_spec.h) excludes the sweep flags.\n"
      "Retries while the coordinator is unavailable (up to --timeout) reuse one request id, so\n"
      "they never create a second sweep.\n\n",
      kWatchExitCodes));
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  if (!flags.positional().empty()) return UsageError("submit", "unexpected argument " + Quote(flags.positional()[0]));
  const bool dry_run = flags.GetBool("dry-run"), watch = flags.GetBool("watch"), json = flags.GetBool("json");
  if (dry_run && watch) return UsageError("submit", "--dry-run and --watch exclude each other");
  absl::StatusOr<absl::Duration> reconnect = SecondsFlag(flags, "reconnect-timeout", 86400 * 7);
  if (!reconnect.ok()) return UsageError("submit", reconnect.status().message());

  SweepDefaults defaults;
  defaults.random_seed = RandomUint64();
  absl::StatusOr<SweepSpec> spec = SpecFromFlags(flags, defaults);
  if (!spec.ok()) return UsageError("submit", spec.status().message());

  int code = 0;
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;

  v1::SubmitRequest request;
  request.set_request_id(RandomRequestId());
  request.set_spec_json(spec->ToJson().dump());
  request.set_dry_run(dry_run);
  request.set_wait_for_workers(flags.GetBool("wait-for-workers"));
  v1::SubmitResponse response;
  absl::Status s = conn->Unary(
      [&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) { return stub->Submit(ctx, request, &response); });
  if (absl::IsAlreadyExists(s)) {
    return PrintError(absl::StrCat("another sweep is already named ", Quote(spec->name), " (", s.message(),
                                   "); choose another --name"));
  }
  if (absl::IsInvalidArgument(s)) return PrintError(absl::StrCat("the coordinator rejected the sweep: ", s.message()));
  if (!s.ok()) return PrintError(s.message());
  if (!json) {
    for (const std::string& w : response.warnings()) std::cerr << "sdfarm: warning: " << w << "\n";
  }

  const std::string eta = response.eta_seconds() > 0 ? FormatDuration(response.eta_seconds()) : "";
  if (dry_run) {
    if (json) {
      Json served = Json::array();
      for (const v1::ServedModel& m : response.served_models()) {
        served.push_back({{"model", m.model()}, {"workers", m.workers()}, {"images_per_second", m.images_per_second()}});
      }
      Json warnings = Json::array();
      for (const std::string& w : response.warnings()) warnings.push_back(w);
      std::cout << DumpJson({{"dry_run", true},
                             {"name", spec->name},
                             {"images", response.images()},
                             {"jobs", response.jobs()},
                             {"eta_seconds", response.eta_seconds()},
                             {"live_workers", response.live_workers()},
                             {"served_models", std::move(served)},
                             {"warnings", std::move(warnings)},
                             {"size_note", response.size_note()}})
                << "\n";
    } else {
      std::cout << "sweep " << spec->name << ": " << response.images() << " images in " << response.jobs()
                << " jobs for model " << spec->model << "\n";
      if (!response.size_note().empty()) std::cout << response.size_note() << "\n";
      std::string fleet;
      for (const v1::ServedModel& m : response.served_models()) {
        absl::StrAppend(&fleet, fleet.empty() ? "" : ", ", m.model(), " (", m.workers(), " worker",
                        m.workers() == 1 ? "" : "s", ", ", FormatRate(m.images_per_second()), " images/s)");
      }
      if (response.live_workers() == 0) {
        std::cout << "no live worker serves model " << spec->model << "; "
                  << (fleet.empty() ? "no worker is live" : "the live workers serve " + fleet)
                  << "\nsubmitting it needs --wait-for-workers (it then waits for a worker of " << spec->model << ")\n";
      } else {
        std::cout << response.live_workers() << " live worker" << (response.live_workers() == 1 ? "" : "s")
                  << " serve " << spec->model << "; ETA "
                  << (eta.empty() ? "unknown until they have finished an image" : eta) << "\n"
                  << "the fleet serves: " << fleet << "\n";
      }
    }
    return kExitOk;
  }
  // The output folder is in the sweep's status; a failure here loses nothing.
  absl::StatusOr<v1::SweepStatus> status = CallStatus(conn.get(), response.sweep_id());
  const std::string output_dir = status.ok() ? status->output_dir() : "";
  if (json) {
    std::cout << DumpJson({{"sweep_id", response.sweep_id()},
                           {"name", spec->name},
                           {"images", response.images()},
                           {"jobs", response.jobs()},
                           {"eta_seconds", response.eta_seconds()},
                           {"output_dir", output_dir},
                           {"size_note", response.size_note()}})
              << "\n"
              << std::flush;
  } else {
    std::cout << "sweep " << response.sweep_id() << " (" << spec->name << "): " << response.images() << " images in "
              << response.jobs() << " jobs" << (eta.empty() ? "" : ", ETA " + eta) << "\n";
    if (!response.size_note().empty()) std::cout << response.size_note() << "\n";
    if (response.live_workers() == 0) {
      std::cout << "no live worker serves model " << spec->model << " yet: the sweep waits for one\n";
    }
    if (!output_dir.empty()) std::cout << "output: " << output_dir << " (on the coordinator's machine)\n";
    if (!watch) std::cout << "follow it with: sdfarm watch " << response.sweep_id() << "\n";
    std::cout << std::flush;
  }
  if (!watch) return kExitOk;
  return WatchToEnd(conn.get(), response.sweep_id(), json, *reconnect);
}

int RunWatch(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm watch", "Follows a sweep's progress until it is DONE or CANCELLED.");
  flags.AllowPositional("SWEEP", "the sweep's id or name");
  flags.AddBool("json", "one JSON object per event and line: the status fields, new_files and failures");
  flags.Add("reconnect-timeout", "SECONDS", "give up after the coordinator is unreachable this long", "300");
  AddGlobalFlags(&flags);
  flags.SetEpilog(
      absl::StrCat("On a terminal: one line redrawn in place (bar, done/total, failed, images/s, ETA, per-worker\n"
                   "rates). Otherwise: a plain line per change, at most every 2 s, and one at the end. Failed\n"
                   "images are printed as they are reported. Reconnects (0.2 s backoff doubling to 2 s) while the\n"
                   "coordinator restarts.\n\n"
                   "Examples:\n"
                   "  sdfarm watch fox-study\n"
                   "  sdfarm watch --json s1a2b3c4 | jq -c '{done, failed, new_files}'\n\n",
                   kWatchExitCodes));
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  std::string sweep;
  int code = 0;
  if (!OnePositional(flags, "watch", "SWEEP (id or name)", &sweep, &code)) return code;
  absl::StatusOr<absl::Duration> reconnect = SecondsFlag(flags, "reconnect-timeout", 86400 * 7);
  if (!reconnect.ok()) return UsageError("watch", reconnect.status().message());
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;
  return WatchToEnd(conn.get(), sweep, flags.GetBool("json"), *reconnect);
}

void PrintStatus(const v1::SweepStatus& s) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"sweep", absl::StrCat(s.sweep_id(), " (", s.name(), ")")});
  rows.push_back({"state", std::string(StateName(s.state()))});
  rows.push_back({"model", absl::StrCat(s.model(), " (priority ", s.priority(), ")")});
  std::string progress =
      absl::StrCat(ProgressBar(s.done(), s.failed(), s.total(), 30), " ", s.done(), "/", s.total(), " done");
  if (s.failed() > 0) absl::StrAppend(&progress, ", ", s.failed(), " failed");
  absl::StrAppend(&progress, "; jobs ", s.jobs_done(), "/", s.jobs());
  rows.push_back({"progress", progress});
  if (!s.active().empty()) {
    std::vector<std::string> jobs;
    for (const v1::ActiveJob& a : s.active()) {
      jobs.push_back(absl::StrCat(a.job_id(), " on ", a.worker_id(), ": ", a.images(), " image",
                                  a.images() == 1 ? "" : "s", a.total_steps() > 0 ? absl::StrCat(", step ", a.step(), "/",
                                                                                                  a.total_steps())
                                                                                  : ""));
    }
    rows.push_back({"rendering", absl::StrJoin(jobs, "; ")});
  }
  if (s.state() == v1::RUNNING) {
    rows.push_back({"rate", absl::StrCat(FormatRate(s.images_per_second()), " images/s, ETA ",
                                         s.eta_seconds() > 0 ? FormatDuration(s.eta_seconds()) : "--",
                                         s.live_workers() == 0 ? " (no live worker serves the model)" : "")});
  } else if (s.state() == v1::PAUSED) {
    rows.push_back({"rate", "paused: no new jobs are handed out (sdfarm resume " + s.name() + ")"});
  }
  if (s.workers_size() > 0 && s.state() == v1::RUNNING) {
    std::vector<std::string> workers;
    for (const v1::WorkerRate& w : s.workers()) {
      workers.push_back(absl::StrCat(w.worker_id(), " ", FormatRate(w.images_per_second()), " images/s"));
    }
    rows.push_back({"workers", absl::StrJoin(workers, ", ")});
  }
  for (const std::string& w : s.warnings()) rows.push_back({"warning", w});
  rows.push_back({"output", s.output_dir()});
  rows.push_back({"created", LocalTime(s.created_unix_ms())});
  std::cout << FormatTable(rows);
}

int RunStatus(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm status", "Shows one sweep: state, progress, rate, ETA, workers, output folder.");
  flags.AllowPositional("SWEEP", "the sweep's id or name");
  flags.AddBool("json", "print the status as one JSON object");
  AddGlobalFlags(&flags);
  flags.SetEpilog(
      "Examples:\n  sdfarm status fox-study\n  sdfarm status --json s1a2b3c4\n\n"
      "Exit codes: 0, or 5 when Redis lost the sweep's state and the coordinator could not rebuild it\n"
      "(sdfarm adopt NAME after fixing the cause); 1 on errors.\n");
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  std::string sweep;
  int code = 0;
  if (!OnePositional(flags, "status", "SWEEP (id or name)", &sweep, &code)) return code;
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;
  absl::StatusOr<v1::SweepStatus> status = CallStatus(conn.get(), sweep);
  if (!status.ok()) return PrintError(status.status().message());
  if (flags.GetBool("json")) {
    std::cout << DumpJson(StatusJson(*status)) << "\n";
  } else {
    PrintStatus(*status);
  }
  if (status->state_lost()) {
    std::cerr << "sdfarm: Redis lost the state of sweep " << status->name()
              << " and the coordinator could not rebuild it (see the warnings); fix that, then: sdfarm adopt "
              << status->name() << "\n";
    return kExitSweepStateLost;
  }
  return kExitOk;
}

int RunList(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm ls", "Lists the coordinator's sweeps, one per line.");
  flags.AddBool("json", "print a JSON array of statuses");
  AddGlobalFlags(&flags);
  flags.SetEpilog("Columns: id, name, state, done/failed/total, model, created (local time).\n");
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  if (!flags.positional().empty()) return UsageError("ls", "unexpected argument " + Quote(flags.positional()[0]));
  int code = 0;
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;
  v1::ListResponse response;
  absl::Status s = conn->Unary([&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) {
    return stub->List(ctx, v1::ListRequest(), &response);
  });
  if (!s.ok()) return PrintError(s.message());
  if (flags.GetBool("json")) {
    Json all = Json::array();
    for (const v1::SweepStatus& sweep : response.sweeps()) all.push_back(StatusJson(sweep));
    std::cout << DumpJson(all) << "\n";
    return kExitOk;
  }
  if (response.sweeps().empty()) {
    std::cout << "no sweeps\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"ID", "NAME", "STATE", "DONE/FAILED/TOTAL", "MODEL", "CREATED"}};
  for (const v1::SweepStatus& sweep : response.sweeps()) {
    rows.push_back({sweep.sweep_id(), sweep.name(), std::string(StateName(sweep.state())),
                    absl::StrCat(sweep.done(), "/", sweep.failed(), "/", sweep.total()), sweep.model(),
                    LocalTime(sweep.created_unix_ms())});
  }
  std::cout << FormatTable(rows);
  return kExitOk;
}

// cancel, pause and resume: one sweep in, its new status out.
int RunSweepAction(const std::string& action, const std::vector<std::string>& args) {
  const std::string summary = action == "cancel"  ? "Cancels a sweep: queued jobs are dropped, running ones stopped; "
                                                    "images already written stay."
                              : action == "pause" ? "Pauses a sweep: no new jobs are handed out; running ones finish."
                                                  : "Resumes a paused sweep.";
  tools::CliFlags flags("sdfarm " + action, summary);
  flags.AllowPositional("SWEEP", "the sweep's id or name");
  flags.AddBool("json", "print the new status as JSON");
  AddGlobalFlags(&flags);
  flags.SetEpilog("Example:\n  sdfarm " + action + " fox-study\n");
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  std::string sweep;
  int code = 0;
  if (!OnePositional(flags, action, "SWEEP (id or name)", &sweep, &code)) return code;
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;
  v1::SweepRef ref;
  ref.set_sweep(sweep);
  v1::SweepStatus status;
  absl::Status s = conn->Unary([&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) {
    if (action == "cancel") return stub->Cancel(ctx, ref, &status);
    if (action == "pause") return stub->Pause(ctx, ref, &status);
    return stub->Resume(ctx, ref, &status);
  });
  if (!s.ok()) return PrintError(s.message());
  if (flags.GetBool("json")) {
    std::cout << DumpJson(StatusJson(status)) << "\n";
  } else {
    std::cout << "sweep " << status.sweep_id() << " (" << status.name() << "): " << StateName(status.state()) << ", "
              << status.done() << "/" << status.total() << " done"
              << (status.failed() > 0 ? absl::StrCat(", ", status.failed(), " failed") : "") << "\n";
  }
  return kExitOk;
}

int RunRemove(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm rm",
                        "Removes a sweep: cancels it if unfinished, forgets it on the coordinator (its name is free "
                        "again) and deletes its output folder.");
  flags.AllowPositional("SWEEP", "the sweep's id or name");
  flags.AddBool("keep-files", "keep the output folder (images, metadata.jsonl); only forget the sweep");
  flags.AddBool("json", "print the answer as JSON");
  AddGlobalFlags(&flags);
  flags.SetEpilog(
      "Examples:\n"
      "  sdfarm rm fox-study                 # the sweep and its images are gone\n"
      "  sdfarm rm --keep-files fox-study    # forget it; the folder stays (move it before reusing the name)\n\n"
      "For a sweep of `sdfarm local` whose farm is not running: sdfarm local --output-root DIR --rm NAME\n");
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  std::string sweep;
  int code = 0;
  if (!OnePositional(flags, "rm", "SWEEP (id or name)", &sweep, &code)) return code;
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;
  absl::StatusOr<v1::RemoveResponse> removed = CallRemove(conn.get(), sweep, flags.GetBool("keep-files"));
  if (!removed.ok()) return PrintError(removed.status().message());
  if (flags.GetBool("json")) {
    std::cout << DumpJson({{"sweep_id", removed->sweep_id()},
                           {"name", removed->name()},
                           {"output_dir", removed->output_dir()},
                           {"files_deleted", removed->files_deleted()}})
              << "\n";
  } else {
    std::cout << DescribeRemoval(*removed, flags.GetBool("keep-files")) << "\n";
  }
  return kExitOk;
}



int RunAdopt(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm adopt",
                        "Rebuilds a sweep from its output folder on the coordinator (sweep.json, metadata.jsonl) when "
                        "Redis lost its state: the images on disk are kept and only the missing ones are rendered.");
  flags.AllowPositional("NAME", "the sweep's name (its folder under the coordinator's output root)");
  flags.AddBool("watch", "then follow the sweep's progress until it ends (exit codes as for 'sdfarm watch')");
  flags.AddBool("json", "print the answer as JSON");
  flags.Add("reconnect-timeout", "SECONDS", "with --watch: give up after the coordinator is unreachable this long",
            "300");
  AddGlobalFlags(&flags);
  flags.SetEpilog(absl::StrCat(
      "The coordinator adopts such folders by itself (a sweep whose state vanishes while it runs,\n"
      "a folder without state at start-up, the same spec submitted again); adopt is for the rest,\n"
      "e.g. a folder kept by 'sdfarm rm --keep-files' or one whose automatic repair failed\n"
      "('sdfarm status' exits 5 then). A sweep whose state is intact is left as it is.\n\n"
      "Examples:\n"
      "  sdfarm adopt fox-study\n"
      "  sdfarm adopt fox-study --watch\n\n",
      kWatchExitCodes));
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  std::string name;
  int code = 0;
  if (!OnePositional(flags, "adopt", "NAME", &name, &code)) return code;
  absl::StatusOr<absl::Duration> reconnect = SecondsFlag(flags, "reconnect-timeout", 86400 * 7);
  if (!reconnect.ok()) return UsageError("adopt", reconnect.status().message());
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;
  v1::AdoptRequest request;
  request.set_name(name);
  v1::AdoptResponse response;
  absl::Status s = conn->Unary(
      [&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) { return stub->Adopt(ctx, request, &response); });
  if (!s.ok()) return PrintError(s.message());
  if (flags.GetBool("json")) {
    std::cout << DumpJson({{"sweep_id", response.sweep_id()},
                           {"name", response.name()},
                           {"adopted", response.adopted()},
                           {"images_on_disk", response.images_on_disk()},
                           {"images_missing", response.images_missing()},
                           {"output_dir", response.output_dir()}})
              << "\n"
              << std::flush;
  } else if (response.adopted()) {
    std::cout << "adopted sweep " << response.sweep_id() << " (" << response.name() << ") from "
              << response.output_dir() << ": " << response.images_on_disk() << " images on disk kept, "
              << response.images_missing() << " to render\n"
              << std::flush;
  } else {
    std::cout << "sweep " << response.sweep_id() << " (" << response.name()
              << ") has its state in Redis: nothing to adopt (" << response.images_on_disk() << " images on disk, "
              << response.images_missing() << " to go)\n"
              << std::flush;
  }
  if (!flags.GetBool("watch")) return kExitOk;
  return WatchToEnd(conn.get(), response.sweep_id(), flags.GetBool("json"), *reconnect);
}

int RunWorkers(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm workers", "Lists the workers the coordinator knows, one per line.");
  flags.AddBool("json", "print a JSON array");
  AddGlobalFlags(&flags);
  flags.SetEpilog(
      "Columns: worker id, host, device, model, batch size, images/s (images finished in the last\n"
      "minute over the time since their jobs started, as in 'status' and 'watch'), current job and\n"
      "its step, time since the last heartbeat, state: rendering, idle, draining (finishing its job,\n"
      "then exiting) or lost (no heartbeat; listed for 10 minutes, then forgotten). Workers that\n"
      "stop cleanly leave the list.\n");
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  if (!flags.positional().empty()) return UsageError("workers", "unexpected argument " + Quote(flags.positional()[0]));
  int code = 0;
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;
  v1::WorkersResponse response;
  absl::Status s = conn->Unary([&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) {
    return stub->Workers(ctx, v1::WorkersRequest(), &response);
  });
  if (!s.ok()) return PrintError(s.message());
  for (const std::string& w : response.warnings()) std::cerr << "sdfarm: warning: " << w << "\n";
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  if (flags.GetBool("json")) {
    Json all = Json::array();
    for (const v1::WorkerStatus& w : response.workers()) {
      all.push_back({{"worker_id", w.worker_id()},
                     {"host", w.info().host()},
                     {"device", w.info().device()},
                     {"device_name", w.info().device_name()},
                     {"model", w.info().model()},
                     {"model_hash", w.info().model_hash()},
                     {"batch_size", w.info().batch_size()},
                     {"version", w.info().version()},
                     {"images_per_second", w.images_per_second()},
                     {"images_done", w.images_done()},
                     {"current_job_id", w.current_job_id()},
                     {"step", w.last_step().step()},
                     {"total_steps", w.last_step().total_steps()},
                     {"last_heartbeat_unix_ms", w.last_heartbeat_unix_ms()},
                     {"draining", w.draining()},
                     {"lost", w.lost()}});
    }
    std::cout << DumpJson(all) << "\n";
    return kExitOk;
  }
  if (response.workers().empty()) {
    std::cout << "no workers\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "HOST", "DEVICE", "MODEL", "BATCH", "IMAGES/S", "JOB", "STEP", "HEARTBEAT", "STATE"}};
  for (const v1::WorkerStatus& w : response.workers()) {
    const bool busy = !w.current_job_id().empty();
    const std::string step = busy && w.last_step().total_steps() > 0
                                 ? absl::StrCat(w.last_step().step(), "/", w.last_step().total_steps())
                                 : "-";
    const std::string seen =
        w.last_heartbeat_unix_ms() > 0 ? FormatDuration((now_ms - w.last_heartbeat_unix_ms()) / 1000.0) + " ago" : "-";
    rows.push_back({w.worker_id(), w.info().host(), w.info().device(), w.info().model(),
                    absl::StrCat(w.info().batch_size()), FormatRate(w.images_per_second()),
                    busy ? w.current_job_id() : "-", step, seen,
                    w.lost() ? "lost" : w.draining() ? "draining" : busy ? "rendering" : "idle"});
  }
  std::cout << FormatTable(rows);
  return kExitOk;
}

std::string Bytes(int64_t n) {
  char buf[64];
  if (n < 1024) {
    std::snprintf(buf, sizeof(buf), "%lld bytes", static_cast<long long>(n));
  } else if (n < (1 << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", n / 1024.0);
  } else if (n < (int64_t{1} << 30)) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", n / 1048576.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", n / 1073741824.0);
  }
  return buf;
}

int RunGet(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm get",
                        "Downloads a sweep's files (PNGs, metadata.jsonl, sweep.json) into OUT/<sweep name>/.");
  flags.AllowPositional("SWEEP", "the sweep's id or name");
  flags.Add("out", "DIR", "folder to put the sweep's folder in", ".");
  flags.AddBool("verbose", "print each file as it completes");
  AddGlobalFlags(&flags);
  flags.SetEpilog(
      "Each file is written under a temporary name and renamed when complete, so a file that is\n"
      "there is whole. Paths from the coordinator that are absolute or contain \"..\" are refused.\n"
      "--timeout is how long the download may stall, not its total time.\n\n"
      "Examples:\n"
      "  sdfarm get fox-study                 # ./fox-study/\n"
      "  sdfarm get s1a2b3c4 --out ~/renders  # ~/renders/<name>/\n");
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  std::string sweep;
  int code = 0;
  if (!OnePositional(flags, "get", "SWEEP (id or name)", &sweep, &code)) return code;
  std::unique_ptr<Connection> conn = Connect(flags, &code);
  if (!conn) return code;
  absl::StatusOr<v1::SweepStatus> status = CallStatus(conn.get(), sweep);
  if (!status.ok()) return PrintError(status.status().message());
  if (absl::Status s = CheckFolderName(status->name()); !s.ok()) {
    return PrintError(absl::StrCat("refusing the sweep name from the coordinator: ", s.message()));
  }
  const std::filesystem::path dir = std::filesystem::path(flags.Get("out")) / status->name();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return PrintError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));

  ChunkWriter writer(dir);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, conn->options().token, absl::ZeroDuration());
  v1::SweepRef ref;
  ref.set_sweep(status->sweep_id());
  absl::Status write_status;
  grpc::Status rpc_status;
  bool stalled = false;
  {
    IdleWatchdog watchdog(&ctx, conn->options().timeout);
    std::unique_ptr<grpc::ClientReader<v1::FileChunk>> reader = conn->stub()->Get(&ctx, ref);
    v1::FileChunk chunk;
    size_t reported = 0;
    while (reader->Read(&chunk)) {
      watchdog.Kick();
      write_status = writer.Write(chunk);
      if (!write_status.ok()) {
        ctx.TryCancel();
        while (reader->Read(&chunk)) {
        }
        break;
      }
      if (flags.GetBool("verbose")) {
        for (; reported < writer.files().size(); ++reported) std::cout << writer.files()[reported] << "\n";
      }
    }
    rpc_status = reader->Finish();
    stalled = watchdog.fired();
  }
  if (!write_status.ok()) return PrintError(write_status.message());
  if (stalled) {
    return PrintError(absl::StrCat("no data from the coordinator for ", absl::FormatDuration(conn->options().timeout),
                                   " (--timeout); the download stopped; run it again"));
  }
  if (!rpc_status.ok()) return PrintError(conn->Explain(FromGrpc(rpc_status)).message());
  if (absl::Status s = writer.Finish(); !s.ok()) return PrintError(s.message());
  std::cout << "fetched " << writer.files().size() << " files (" << Bytes(writer.bytes()) << ") into " << dir.string()
            << "\n";
  return kExitOk;
}

int RunGrid(const std::vector<std::string>& args) {
  tools::CliFlags flags("sdfarm grid",
                        "Makes contact sheets (a labelled grid, e.g. seed by guidance) from a sweep folder.");
  flags.AllowPositional("DIR", "a sweep folder holding metadata.jsonl (the coordinator's, or one from 'sdfarm get')");
  flags.Add("rows", "KEY", "metadata key along the rows", "seed");
  flags.Add("cols", "KEY", "metadata key along the columns (guidance = guidance_scale)", "guidance");
  flags.Add("max-cell", "PIXELS", "larger images are downscaled to this many pixels a side (16..4096)", "256");
  flags.Add("out", "DIR", "where to write the sheets (default: <sweep folder>.grids beside it, outside the dataset)");
  flags.SetEpilog(
      "Keys: seed, guidance (guidance_scale), steps, sampler, prompt, negative_prompt, width, height;\n"
      "SDXL rows also prompt_2, negative_prompt_2, original_size, target_size, crop_top_left,\n"
      "guidance_rescale (and the negative_* sizes when given).\n"
      "When other parameters vary too, one sheet per combination: grid-001.png, grid-002.png, ...\n\n"
      "Examples:\n"
      "  sdfarm grid sdfarm-out/fox-study\n"
      "  sdfarm grid fox-study --rows prompt --cols sampler --max-cell 128 --out sheets\n");
  if (int code = ParseFlags(&flags, args); code >= 0) return code;
  std::string dir;
  int code = 0;
  if (!OnePositional(flags, "grid", "DIR (a sweep folder)", &dir, &code)) return code;
  GridOptions options;
  options.rows = flags.Get("rows");
  options.cols = flags.Get("cols");
  auto max_cell = flags.GetInt("max-cell", 16, 4096);
  if (!max_cell.ok()) return UsageError("grid", max_cell.status().message());
  options.max_cell = static_cast<int>(*max_cell);
  options.out_dir = flags.Get("out");
  absl::StatusOr<GridSummary> grid = MakeGrid(dir, options);
  if (!grid.ok()) return PrintError(grid.status().message());
  for (const std::string& file : grid->files) std::cout << file << "\n";
  std::cout << grid->images << " images" << (grid->missing > 0 ? absl::StrCat(", ", grid->missing, " missing") : "")
            << " in " << grid->files.size() << " sheet" << (grid->files.size() == 1 ? "" : "s") << "\n";
  return kExitOk;
}

constexpr char kTopUsage[] =
    "Usage: sdfarm [global flags] <command> [flags] [args]\n"
    "\n"
    "The client of sdfarm, a distributed Stable Diffusion render farm: sweeps of prompts, seeds,\n"
    "guidance scales, ... rendered by GPU workers, collected by a coordinator.\n"
    "\n"
    "Commands:\n"
    "  local     run a sweep on this machine: starts redis-server, a coordinator and N workers, stops them after\n"
    "  submit    submit a sweep (flags or a YAML/JSON file) to a coordinator; --dry-run counts, --watch follows\n"
    "  watch     follow a sweep's progress until it is done\n"
    "  status    show one sweep\n"
    "  ls        list the sweeps\n"
    "  cancel    cancel a sweep\n"
    "  pause     stop handing out a sweep's jobs\n"
    "  resume    resume a paused sweep\n"
    "  rm        remove a sweep: cancel it, forget it, delete its folder (--keep-files keeps it)\n"
    "  adopt     rebuild a sweep from its folder after Redis lost its state; renders only what is missing\n"
    "  workers   list the workers with their rates and current jobs\n"
    "  get       download a sweep's images and metadata.jsonl\n"
    "  grid      make contact sheets (e.g. seed by guidance) from a sweep folder\n"
    "\n"
    "Global flags (before or after the command):\n"
    "  --coordinator HOST:PORT   the coordinator (default 127.0.0.1:7733) [env SDFARM_COORDINATOR]\n"
    "  --token T                 the client token [env SDFARM_TOKEN]\n"
    "                            Without both: a running `sdfarm local` of ./sdfarm-out (or\n"
    "                            $SDFARM_OUTPUT_ROOT), else the last one started, is used by itself.\n"
    "  --tls-ca PEM              verify the coordinator's TLS certificate against this CA [env SDFARM_TLS_CA]\n"
    "  --timeout SECONDS         per call, retries while unavailable included (default 30)\n"
    "\n"
    "Exit codes: 0 success; 1 failure; 2 usage error; 3 the sweep finished with failed images;\n"
    "4 the sweep was cancelled; 5 Redis lost the sweep's state and it is not rebuilt (sdfarm adopt);\n"
    "130 interrupted (local).\n"
    "\n"
    "Examples:\n"
    "  sdfarm local --workers 2 --model models/sd15 --prompt \"a red fox\" --seeds 0-3 --guidance 3,7.5 --grid\n"
    "  export SDFARM_COORDINATOR=farm:7733 SDFARM_TOKEN=...\n"
    "  sdfarm submit --model sd15 --prompt \"a red fox\" --seeds 0-99 --watch\n"
    "  sdfarm get fox-study --out renders && sdfarm grid renders/fox-study\n"
    "\n"
    "Run 'sdfarm <command> --help' for a command's flags and examples.\n";

bool IsGlobalFlag(std::string_view name) {
  return name == "coordinator" || name == "token" || name == "tls-ca" || name == "timeout";
}

}  // namespace

std::vector<std::string> SweepFlagNames() {
  std::vector<std::string> names = {"file"};
  for (const SweepFlag& f : kSweepFlags) {
    if (std::string_view(f.flag) != "model") names.push_back(f.flag);
  }
  return names;
}

absl::StatusOr<v1::SweepStatus> CallStatus(Connection* conn, const std::string& sweep) {
  v1::SweepRef ref;
  ref.set_sweep(sweep);
  v1::SweepStatus status;
  RETURN_IF_ERROR(conn->Unary(
      [&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) { return stub->Status(ctx, ref, &status); }));
  return status;
}

absl::StatusOr<v1::RemoveResponse> CallRemove(Connection* conn, const std::string& sweep, bool keep_files) {
  v1::RemoveRequest request;
  request.set_sweep(sweep);
  request.set_keep_files(keep_files);
  v1::RemoveResponse response;
  RETURN_IF_ERROR(conn->Unary(
      [&](v1::ClientService::Stub* stub, grpc::ClientContext* ctx) { return stub->Remove(ctx, request, &response); }));
  return response;
}

std::string DescribeRemoval(const v1::RemoveResponse& r, bool keep_files) {
  return keep_files ? absl::StrCat("removed sweep ", r.sweep_id(), " (", r.name(), "); its files stay in ",
                                   r.output_dir())
                    : absl::StrCat("removed sweep ", r.sweep_id(), " (", r.name(), ") and its folder ", r.output_dir(),
                                   " (", r.files_deleted(), " files and folders)");
}

// ---------------------------------------------------------------- shared --

int PrintError(absl::string_view message, int code) {
  std::string line(message);
  while (!line.empty() && line.back() == '\n') line.pop_back();
  std::cerr << "sdfarm: error: " << line << "\n";
  return code;
}

int ParseFlags(tools::CliFlags* flags, const std::vector<std::string>& args) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const engine::Status s = flags->Parse(static_cast<int>(copy.size()), argv.data());
  if (flags->help_requested()) {
    std::cout << flags->Usage();
    return kExitOk;
  }
  if (!s.ok()) {
    std::string command = args.empty() ? "sdfarm" : args[0];
    if (command.rfind("sdfarm ", 0) == 0) command = command.substr(7);
    return UsageError(command, s.message());
  }
  return -1;
}

void AddGlobalFlags(tools::CliFlags* flags) {
  flags->Add("coordinator", "HOST:PORT", "the coordinator", "127.0.0.1:7733");
  flags->SetEnv("coordinator", "SDFARM_COORDINATOR");
  flags->Add("token", "T", "the client token");
  flags->SetEnv("token", "SDFARM_TOKEN");
  flags->Add("tls-ca", "PEM", "verify the coordinator's TLS certificate against this CA bundle");
  flags->SetEnv("tls-ca", "SDFARM_TLS_CA");
  flags->Add("timeout", "SECONDS", "per call to the coordinator, retries included", "30");
}

absl::StatusOr<GlobalOptions> GlobalsFromFlags(const tools::CliFlags& flags) {
  GlobalOptions options;
  options.coordinator = flags.Get("coordinator");
  options.token = flags.Get("token");
  options.tls_ca = flags.Get("tls-ca");
  auto timeout = flags.GetDouble("timeout", 0.1, 86400);
  if (!timeout.ok()) return ToAbsl(timeout.status());
  options.timeout = absl::Seconds(*timeout);
  if (options.coordinator.empty()) return absl::InvalidArgumentError("--coordinator is empty");
  if (!flags.Has("coordinator") && !flags.Has("token")) {
    // Neither given: a running `sdfarm local` of this folder (or the user's latest).
    if (std::optional<LocalFarm> local = FindLocalFarm()) {
      options.coordinator = local->coordinator;
      options.token = local->token;
      options.local_farm_root = local->output_root;
    }
  }
  return options;
}

void AddSweepFlags(tools::CliFlags* flags, bool model_flag) {
  flags->Add("file", "SPEC", "a YAML or JSON sweep file (excludes the sweep flags below)");
  flags->Add("name", "NAME",
             model_flag ? "sweep name = output folder (default: <model>-<YYYYmmdd-HHMMSS>)"
                        : "sweep name = output folder (default: <model>-<hash of the sweep>, so re-running resumes)");
  if (model_flag) flags->Add("model", "NAME", "the model, by the name the workers serve it (required)");
  flags->Add("prompt", "TEXT", "a prompt", std::nullopt, /*repeatable=*/true);
  flags->Add("prompts-file", "FILE", "more prompts, one per line (blank lines skipped)");
  flags->Add("negative-prompt", "TEXT", "a negative prompt (several: each is a sweep axis; default none)", std::nullopt,
             /*repeatable=*/true);
  flags->Add("negative-prompts-file", "FILE", "negative prompts, one per line");
  flags->Add("seeds", "LIST", "seeds, ranges and random draws: 0-99,1000 or random:8 (required)");
  flags->Add("guidance", "LIST", "guidance scales, e.g. 1,4,7.5 (default 7.5)");
  flags->Add("steps", "LIST", "step counts, e.g. 20,30 (default 30)");
  flags->Add("sampler", "NAMES",
             "samplers, comma list (default euler_a; pndm ddim euler euler_a lms dpmpp_2m dpmpp_2m_karras ddpm)",
             std::nullopt, /*repeatable=*/true);
  flags->Add("size", "LIST",
             model_flag ? "image sizes WxH, e.g. 512x512,768x512 (default: the model's own, as diffusers: 1024x1024 "
                          "for SDXL, 512x512 for SD 1.5, as its live workers report; 512x512 when none is live)"
                        : "image sizes WxH, e.g. 512x512,768x512 (default: the model's own, as diffusers: 512x512 for "
                          "SD 1.x, 256x256 for the bundled model)");
  flags->Add("images-per-combination", "N", "seed s also renders s+1, ..., s+N-1 (default 1)");
  flags->AddBool("zip", "advance the lists together (length-1 lists repeat) instead of the Cartesian product");
  flags->Add("priority", "N", "1..100: weight in the fair share between sweeps (default 1)");
  flags->Add("lora", "NAME[:SCALE]",
             "a LoRA for every image, by the name in the workers' --lora-dir (scale default 1); repeat for "
             "several. For LoRA sets as a sweep axis use a sweep file (loras: [[], style:0.5, style:1])",
             std::nullopt, /*repeatable=*/true);
  flags->Add("vae", "NAME", "a VAE from the workers' --vae-dir instead of the model's own");
  flags->AddBool("prompt-chunking",
                 "encode prompts over 75 tokens in chunks of 75, as AUTOMATIC1111 does (default: CLIP's 77-token "
                 "limit cuts them, with a warning)");
  // SDXL models (each a sweep axis; see docs/farm.md).
  flags->Add("prompt-2", "TEXT", "SDXL: a prompt for the second text encoder (default: the prompt)", std::nullopt,
             /*repeatable=*/true);
  flags->Add("negative-prompt-2", "TEXT", "SDXL: a negative prompt for the second text encoder", std::nullopt,
             /*repeatable=*/true);
  flags->Add("original-size", "LIST", "SDXL micro-conditioning original sizes WxH, e.g. 1024x1024,2048x2048 "
             "(default: the image size)");
  flags->Add("target-size", "LIST", "SDXL micro-conditioning target sizes WxH (default: the image size)");
  flags->Add("crop-top-left", "TOP,LEFT", "SDXL micro-conditioning crop (default 0,0); repeat for several",
             std::nullopt, /*repeatable=*/true);
  flags->Add("negative-original-size", "WxH", "SDXL: the negative branch's original size (with "
             "--negative-target-size)");
  flags->Add("negative-target-size", "WxH", "SDXL: the negative branch's target size");
  flags->Add("negative-crop-top-left", "TOP,LEFT", "SDXL: the negative branch's crop");
  flags->Add("guidance-rescale", "LIST", "diffusers' guidance_rescale values in [0, 1], e.g. 0,0.7 (default 0)");
}

std::string DefaultSweepName(std::string_view model, absl::Time now, absl::TimeZone zone) {
  const std::string stamp = absl::FormatTime("%Y%m%d-%H%M%S", now, zone);
  return absl::StrCat(std::string(model.substr(0, 100 - 1 - stamp.size())), "-", stamp);
}

absl::StatusOr<SweepSpec> SpecFromFlags(const tools::CliFlags& flags, const SweepDefaults& defaults) {
  const coordinator::SweepLimits limits;
  const bool model_is_flag = defaults.model.empty();
  if (flags.Has("file")) {
    for (const SweepFlag& f : kSweepFlags) {
      if (!model_is_flag && std::string_view(f.flag) == "model") continue;
      if (flags.Has(f.flag)) {
        return absl::InvalidArgumentError(absl::StrCat("--file excludes the sweep flags, but --", f.flag,
                                                       " was given: set \"", f.field, "\" in the file instead"));
      }
    }
    return coordinator::ParseSweepFile(flags.Get("file"), limits, defaults.random_seed);
  }

  Json j = Json::object();
  // A placeholder that passes validation; the default name needs the spec first.
  j["name"] = flags.Has("name") ? flags.Get("name") : "unnamed";
  const std::string model = model_is_flag ? flags.Get("model") : defaults.model;
  if (model.empty()) return absl::InvalidArgumentError("--model is required: the model name the workers serve");
  j["model"] = model;
  if (auto prompts = flags.GetAll("prompt"); !prompts.empty()) j["prompts"] = prompts;
  if (flags.Has("prompts-file")) j["prompts_file"] = flags.Get("prompts-file");
  if (auto negatives = flags.GetAll("negative-prompt"); !negatives.empty()) j["negative_prompts"] = negatives;
  if (flags.Has("negative-prompts-file")) j["negative_prompts_file"] = flags.Get("negative-prompts-file");
  if (flags.Has("seeds")) j["seeds"] = flags.Get("seeds");
  if (flags.Has("guidance")) {
    ASSIGN_OR_RETURN(j["guidance_scales"], ParseNumbers("guidance", flags.Get("guidance")));
  }
  if (flags.Has("steps")) {
    ASSIGN_OR_RETURN(j["steps"], ParseInts("steps", flags.Get("steps")));
  }
  if (flags.Has("sampler")) {
    std::vector<std::string> samplers;
    for (const std::string& value : flags.GetAll("sampler")) {
      for (std::string& s : SplitList(value)) samplers.push_back(std::move(s));
    }
    j["samplers"] = samplers;
  }
  if (flags.Has("size")) {
    j["sizes"] = SplitList(flags.Get("size"));
  } else if (!defaults.size.empty()) {
    j["sizes"] = {defaults.size};
  }
  if (flags.Has("images-per-combination")) {
    ASSIGN_OR_RETURN(j["images_per_combination"], ParseOneInt(flags, "images-per-combination"));
  }
  if (flags.GetBool("zip")) j["combine"] = "zip";
  if (auto loras = flags.GetAll("lora"); !loras.empty()) j["lora"] = loras;  // one set
  if (flags.Has("vae")) j["vae"] = flags.Get("vae");
  if (flags.GetBool("prompt-chunking")) j["prompt_chunking"] = true;
  if (auto v = flags.GetAll("prompt-2"); !v.empty()) j["prompts_2"] = v;
  if (auto v = flags.GetAll("negative-prompt-2"); !v.empty()) j["negative_prompts_2"] = v;
  if (flags.Has("original-size")) j["original_sizes"] = SplitList(flags.Get("original-size"));
  if (flags.Has("target-size")) j["target_sizes"] = SplitList(flags.Get("target-size"));
  if (auto v = flags.GetAll("crop-top-left"); !v.empty()) j["crops_top_left"] = v;
  for (const char* f : {"negative-original-size", "negative-target-size", "negative-crop-top-left"}) {
    if (flags.Has(f)) j[absl::StrReplaceAll(f, {{"-", "_"}})] = flags.Get(f);
  }
  if (flags.Has("guidance-rescale")) {
    ASSIGN_OR_RETURN(j["guidance_rescales"], ParseNumbers("guidance-rescale", flags.Get("guidance-rescale")));
  }
  if (flags.Has("priority")) {
    ASSIGN_OR_RETURN(j["priority"], ParseOneInt(flags, "priority"));
  }

  absl::StatusOr<SweepSpec> spec = coordinator::ParseSweepText(j.dump(), /*yaml=*/false, limits, defaults.random_seed);
  if (!spec.ok()) return ToFlagError(spec.status());
  if (!flags.Has("name")) {
    if (defaults.name_from_spec) {
      spec->name.clear();
      const std::string hash = Sha256Hex(spec->ToJson().dump()).substr(0, 8);
      spec->name = absl::StrCat(spec->model.substr(0, 100 - 1 - hash.size()), "-", hash);
    } else {
      spec->name = DefaultSweepName(spec->model, defaults.now, defaults.zone);
    }
    RETURN_IF_ERROR(ToFlagError(coordinator::Validate(*spec, limits)));
  }
  return spec;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

std::string RandomRequestId() {
  std::random_device rd;
  std::string bytes;
  for (int i = 0; i < 4; ++i) {
    const uint32_t v = rd();
    bytes.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  return absl::BytesToHexString(bytes);
}

std::string SpecRequestId(const SweepSpec& spec) { return Sha256Hex(spec.ToJson().dump()).substr(0, 32); }

absl::Status CheckRemotePath(std::string_view path) {
  auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(absl::StrCat("unsafe path ", Quote(path), ": ", why));
  };
  if (path.empty()) return bad("empty");
  if (path.size() > 4096) return bad("longer than 4096 bytes");
  if (path.find('\0') != std::string_view::npos) return bad("contains a NUL byte");
  if (path.find('\\') != std::string_view::npos) return bad("contains a backslash");
  if (path.front() == '/') return bad("absolute");
  if (path.ends_with(".sdfarm-part")) return bad("ends in .sdfarm-part (reserved for partial downloads)");
  for (size_t start = 0;;) {
    const size_t slash = path.find('/', start);
    const std::string_view part =
        path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (part.empty()) return bad("has an empty component");
    if (part == "..") return bad("contains \"..\"");
    if (part == ".") return bad("contains \".\"");
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return absl::OkStatus();
}

absl::Status CheckFolderName(std::string_view name) {
  RETURN_IF_ERROR(CheckRemotePath(name));
  if (name.find('/') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("unsafe folder name ", Quote(name), ": contains '/'"));
  }
  if (name.front() == '.') {
    return absl::InvalidArgumentError(absl::StrCat("unsafe folder name ", Quote(name), ": starts with '.'"));
  }
  return absl::OkStatus();
}

ChunkWriter::~ChunkWriter() { Discard(); }

void ChunkWriter::Discard() {
  for (auto& [path, open] : open_) {
    open.file.reset();
    std::error_code ec;
    std::filesystem::remove(open.temp, ec);
  }
  open_.clear();
}

absl::Status ChunkWriter::Write(const v1::FileChunk& chunk) {
  const std::string& path = chunk.path();
  if (absl::Status s = CheckRemotePath(path); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("refusing a file from the coordinator: ", s.message()));
  }
  auto it = open_.find(path);
  if (it == open_.end()) {
    if (completed_.count(path) > 0) {
      return absl::DataLossError(absl::StrCat("the coordinator sent ", Quote(path), " twice"));
    }
    if (chunk.offset() != 0) {
      return absl::DataLossError(
          absl::StrCat("the first chunk of ", Quote(path), " starts at offset ", chunk.offset(), ", not 0"));
    }
    constexpr size_t kMaxOpenFiles = 64;
    if (open_.size() >= kMaxOpenFiles) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the coordinator interleaves more than ", kMaxOpenFiles, " files"));
    }
    Open open;
    open.target = dir_ / path;
    open.temp = open.target;
    open.temp += ".sdfarm-part";
    std::error_code ec;
    std::filesystem::create_directories(open.target.parent_path(), ec);
    if (ec)
      return absl::InternalError(
          absl::StrCat("cannot create ", open.target.parent_path().string(), ": ", ec.message()));
    open.file.reset(std::fopen(open.temp.c_str(), "wb"));
    if (!open.file) {
      return absl::InternalError(absl::StrCat("cannot write ", open.temp.string(), ": ", std::strerror(errno)));
    }
    it = open_.emplace(path, std::move(open)).first;
  }
  Open& open = it->second;
  if (chunk.offset() != open.size) {
    return absl::DataLossError(
        absl::StrCat("a chunk of ", Quote(path), " starts at offset ", chunk.offset(), ", expected ", open.size));
  }
  const std::string& data = chunk.data();
  if (!data.empty() && std::fwrite(data.data(), 1, data.size(), open.file.get()) != data.size()) {
    return absl::InternalError(absl::StrCat("cannot write ", open.temp.string(), ": ", std::strerror(errno)));
  }
  open.size += static_cast<int64_t>(data.size());
  bytes_ += static_cast<int64_t>(data.size());
  if (!chunk.last()) return absl::OkStatus();

  std::FILE* f = open.file.release();
  if (std::fflush(f) != 0 || std::fclose(f) != 0) {
    return absl::InternalError(absl::StrCat("cannot write ", open.temp.string(), ": ", std::strerror(errno)));
  }
  std::error_code ec;
  std::filesystem::rename(open.temp, open.target, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename to ", open.target.string(), ": ", ec.message()));
  files_.push_back(path);
  completed_.insert(path);
  open_.erase(it);
  return absl::OkStatus();
}

absl::Status ChunkWriter::Finish() {
  if (open_.empty()) return absl::OkStatus();
  const std::string first = open_.begin()->first;
  const size_t n = open_.size();
  Discard();
  return absl::DataLossError(absl::StrCat("the download ended before ", Quote(first),
                                          n > 1 ? absl::StrCat(" and ", n - 1, " more") : "",
                                          " was complete; run it again"));
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const GlobalOptions& options) {
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, MakeChannel(options.coordinator, options.tls_ca));
  return std::unique_ptr<Connection>(new Connection(options, v1::ClientService::NewStub(channel)));
}

absl::Status Connection::Unary(
    const std::function<grpc::Status(v1::ClientService::Stub*, grpc::ClientContext*)>& call) {
  const absl::Time start = absl::Now(), deadline = start + options_.timeout;
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, options_.token, std::max(deadline - absl::Now(), absl::Milliseconds(1)));
    const grpc::Status s = call(stub_.get(), &ctx);
    if (s.ok()) {
      answered_ = true;
      return absl::OkStatus();
    }
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      if (s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) answered_ = true;
      return Explain(FromGrpc(s));
    }
    // A coordinator that never answered is most likely not there at all: say
    // so within first_contact_timeout; one that answered before is retried
    // (a restart) for the whole timeout.
    const absl::Duration limit = answered_ ? options_.timeout : std::min(options_.timeout, options_.first_contact_timeout);
    if (absl::Now() + backoff >= start + limit) return Explain(FromGrpc(s));
    if (!warned_unavailable_) {
      std::cerr << "sdfarm: the coordinator at " << options_.coordinator << " is unavailable (" << s.error_message()
                << "); retrying for up to " << absl::FormatDuration(limit) << "\n";
      warned_unavailable_ = true;
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
}

absl::Status Connection::Explain(const absl::Status& status) const {
  const std::string where = "the coordinator at " + options_.coordinator;
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
      if (!options_.local_farm_root.empty()) {
        return absl::UnavailableError(absl::StrCat("cannot reach the local farm of ", options_.local_farm_root,
                                                   " at ", options_.coordinator, " (", message, ")"));
      }
      return absl::UnavailableError(absl::StrCat(
          "cannot reach ", where, " (", message,
          "); is it running? (--coordinator or SDFARM_COORDINATOR; a running `sdfarm local` is found by itself)"));
    case absl::StatusCode::kUnauthenticated:
      return absl::UnauthenticatedError(
          absl::StrCat(where, " refused the call: ", message, " (give the client token with --token or SDFARM_TOKEN)"));
    case absl::StatusCode::kPermissionDenied:
      return absl::PermissionDeniedError(
          absl::StrCat(where, " refused the call: ", message, " (use the client token, not a worker token)"));
    case absl::StatusCode::kDeadlineExceeded:
      return absl::DeadlineExceededError(absl::StrCat(
          "no answer from ", where, " within ", absl::FormatDuration(options_.timeout), " (--timeout): ", message));
    default:
      return status;
  }
}

absl::StatusOr<v1::SweepStatus> SweepWatcher::Run(const std::function<void(const v1::WatchEvent&)>& on_event,
                                                  const std::function<void(const std::string&)>& on_note) {
  v1::SweepRef ref;
  ref.set_sweep(sweep_);
  absl::Time last_contact = absl::Now();
  absl::Duration backoff = options_.initial_backoff;
  bool outage_noted = false;
  bool ever_answered = connection_->answered();
  while (true) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, connection_->options().token, options_.stream_timeout);
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return absl::CancelledError("stopped watching");
      active_ = &ctx;
    }
    std::unique_ptr<grpc::ClientReader<v1::WatchEvent>> reader = connection_->stub()->Watch(&ctx, ref);
    v1::WatchEvent event;
    bool got_event = false;
    std::optional<v1::SweepStatus> final_status;
    while (reader->Read(&event)) {
      got_event = true;
      last_contact = absl::Now();
      backoff = options_.initial_backoff;
      if (outage_noted) {
        on_note("reconnected to the coordinator");
        outage_noted = false;
      }
      on_event(event);
      if (event.status().state() == v1::DONE || event.status().state() == v1::CANCELLED ||
          event.status().state_lost()) {
        final_status = event.status();
        ctx.TryCancel();
        while (reader->Read(&event)) {
        }
        break;
      }
    }
    const grpc::Status status = reader->Finish();
    {
      absl::MutexLock lock(&mu_);
      active_ = nullptr;
      if (final_status) return *final_status;
      if (cancelled_) return absl::CancelledError("stopped watching");
    }
    switch (status.error_code()) {
      case grpc::StatusCode::NOT_FOUND:
      case grpc::StatusCode::UNAUTHENTICATED:
      case grpc::StatusCode::PERMISSION_DENIED:
      case grpc::StatusCode::INVALID_ARGUMENT:
      case grpc::StatusCode::UNIMPLEMENTED:
      case grpc::StatusCode::FAILED_PRECONDITION:
        return connection_->Explain(FromGrpc(status));
      default:
        break;
    }
    // A stream that ran into its own deadline after delivering events is
    // just reopened; anything else is an outage, retried with backoff.
    if (got_event && (status.ok() || status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)) continue;
    if (got_event) ever_answered = true;
    if (!ever_answered && absl::Now() - last_contact > connection_->options().first_contact_timeout) {
      // Never reached: most likely not running at all, not restarting.
      return connection_->Explain(FromGrpc(status));
    }
    if (absl::Now() - last_contact > options_.reconnect_timeout) {
      return absl::DeadlineExceededError(
          absl::StrCat("lost the coordinator at ", connection_->options().coordinator, " for longer than ",
                       absl::FormatDuration(options_.reconnect_timeout),
                       " (--reconnect-timeout): ", connection_->Explain(FromGrpc(status)).message()));
    }
    if (!outage_noted) {
      on_note(absl::StrCat("lost the coordinator (", status.ok() ? "stream ended" : status.error_message(),
                           "); reconnecting for up to ", absl::FormatDuration(options_.reconnect_timeout)));
      outage_noted = true;
    }
    absl::MutexLock lock(&mu_);
    if (mu_.AwaitWithTimeout(absl::Condition(&cancelled_), backoff)) return absl::CancelledError("stopped watching");
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

void SweepWatcher::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (active_ != nullptr) active_->TryCancel();
}

int ExitCodeForSweep(const v1::SweepStatus& status) {
  if (status.state_lost()) return kExitSweepStateLost;
  if (status.state() == v1::CANCELLED) return kExitSweepCancelled;
  if (status.failed() > 0) return kExitSweepFailed;
  return kExitOk;
}

int RunCli(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  // Global flags may come before the command; they are handed to the
  // command's own parser, which knows them too.
  std::vector<std::string> globals;
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kTopUsage;
      return kExitOk;
    }
    if (a == "--version") {
#ifdef SDFARM_VERSION
      std::cout << "sdfarm " << SDFARM_VERSION << "\n";
#endif
      return kExitOk;
    }
    if (a.rfind("--", 0) != 0) break;
    const size_t eq = a.find('=');
    const std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    if (!IsGlobalFlag(name)) {
      std::cerr << "sdfarm: error: " << a
                << " is not a global flag (global flags: --coordinator --token --tls-ca --timeout; "
                   "the others go after the command)\n";
      return kExitUsage;
    }
    globals.push_back(a);
    if (eq == std::string::npos) {
      if (i + 1 >= args.size()) return PrintError(a + " needs a value", kExitUsage);
      globals.push_back(args[++i]);
    }
  }
  if (i >= args.size()) {
    std::cerr << kTopUsage;
    return kExitUsage;
  }
  std::string command = args[i];
  std::vector<std::string> rest(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
  if (command == "help") {
    if (rest.empty()) {
      std::cout << kTopUsage;
      return kExitOk;
    }
    command = rest[0];
    rest = {"--help"};
  }
  std::vector<std::string> command_args = {"sdfarm " + command};
  for (size_t g = 0; g < globals.size(); ++g) {
    // grid and local talk to no coordinator (local starts its own): the
    // connection flags of an alias like `sdfarm --coordinator farm:7733` are
    // no error there. local keeps --timeout.
    const bool value = globals[g].find('=') == std::string::npos;
    const bool keep =
        (command != "grid" && command != "local") || (command == "local" && globals[g].rfind("--timeout", 0) == 0);
    if (keep) {
      command_args.push_back(globals[g]);
      if (value) command_args.push_back(globals[g + 1]);
    }
    if (value) ++g;
  }
  command_args.insert(command_args.end(), rest.begin(), rest.end());
  try {
    if (command == "submit") return RunSubmit(command_args);
    if (command == "watch") return RunWatch(command_args);
    if (command == "status") return RunStatus(command_args);
    if (command == "ls" || command == "list") return RunList(command_args);
    if (command == "cancel" || command == "pause" || command == "resume") return RunSweepAction(command, command_args);
    if (command == "workers") return RunWorkers(command_args);
    if (command == "rm") return RunRemove(command_args);
    if (command == "adopt") return RunAdopt(command_args);
    if (command == "get") return RunGet(command_args);
    if (command == "grid") return RunGrid(command_args);
    if (command == "local") return RunLocal(command_args);
  } catch (const std::exception& e) {
    return PrintError(absl::StrCat("internal error: ", e.what()));
  }
  std::cerr << "sdfarm: error: unknown command " << Quote(command)
            << " (commands: local submit watch status ls cancel pause resume rm adopt workers get grid; see 'sdfarm --help')\n";
  return kExitUsage;
}

}  // namespace sdfarm::client
