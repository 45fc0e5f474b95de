#include "tests/farm/farm_fixture.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "common/status_macros.h"

namespace sdfarm::testing {
namespace {

std::string ReadAll(const std::string& path) { return ReadFileOrEmpty(path); }

std::string Tail(const std::string& text, size_t n = 4000) {
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

}  // namespace

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string SharedPath(const std::string& relative) { return std::string(SDFARM_SHARED_DIR) + "/" + relative; }

std::string TempRoot() {
  const char* tmp = std::getenv("TMPDIR");
  return tmp && *tmp ? tmp : "/tmp";
}

std::string MakeTempDir(const std::string& tag) {
  std::string templ = absl::StrCat(TempRoot(), "/sdfarm-", tag, "-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) return "";
  return templ;
}

absl::StatusOr<std::unique_ptr<Farm>> Farm::Start(FarmOptions options) {
  std::unique_ptr<Farm> farm(new Farm(std::move(options)));
  if (farm->options_.model_dir.empty()) farm->options_.model_dir = SharedPath("models/tiny-sd");
  farm->dir_ = MakeTempDir("farm");
  if (farm->dir_.empty()) return absl::InternalError(absl::StrCat("mkdtemp under ", TempRoot(), " failed"));
  farm->output_root_ = farm->dir_ + "/out";
  farm->client_token_ = "client-" + std::to_string(getpid()) + "-secret";
  farm->worker_token_ = "worker-" + std::to_string(getpid()) + "-secret";
  ASSIGN_OR_RETURN(farm->redis_, RedisServer::Start(farm->options_.redis));
  ASSIGN_OR_RETURN(farm->port_, PickFreePort());
  farm->address_ = absl::StrCat("127.0.0.1:", farm->port_);
  RETURN_IF_ERROR(farm->StartCoordinator());
  ASSIGN_OR_RETURN(farm->channel_, MakeChannel(farm->address_, ""));
  farm->client_ = sdfarm::v1::ClientService::NewStub(farm->channel_);
  for (int i = 0; i < farm->options_.workers; ++i) {
    ASSIGN_OR_RETURN(int index, farm->StartWorker());
    (void)index;
  }
  return farm;
}

Farm::~Farm() {
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i] && stopped_[i]) (void)workers_[i]->Signal(SIGCONT);  // a stopped child cannot drain
  }
  for (auto& w : workers_) {
    if (w) w->Stop(absl::Seconds(5));
  }
  client_.reset();
  channel_.reset();
  if (coordinator_) coordinator_->Stop(absl::Seconds(10));
  redis_.reset();
  if (!dir_.empty() && std::getenv("SDFARM_KEEP_TEST_DIRS") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

absl::Status Farm::StartCoordinatorNoWait() {
  SpawnOptions o;
  o.argv = {SDFARM_COORDINATOR_BIN,
            "--listen", address_,
            "--redis-url", coordinator_redis_url_.empty() ? redis_->url() : coordinator_redis_url_,
            "--output-root", output_root_,
            "--lease", absl::StrCat(options_.lease_seconds),
            "--max-attempts", absl::StrCat(options_.max_attempts),
            "--job-size", absl::StrCat(options_.job_size),
            "--leader-lease", absl::StrCat(options_.leader_lease_seconds)};
  if (options_.window > 0) o.argv.insert(o.argv.end(), {"--window", absl::StrCat(options_.window)});
  o.argv.insert(o.argv.end(), options_.coordinator_args.begin(), options_.coordinator_args.end());
  o.env = {{"SDFARM_CLIENT_TOKEN", client_token_}, {"SDFARM_WORKER_TOKEN", worker_token_}};
  o.log_file = coordinator_log_path();
  ASSIGN_OR_RETURN(coordinator_, Subprocess::Spawn(o));
  return absl::OkStatus();
}

absl::Status Farm::WaitForCoordinator(absl::Duration timeout) {
  absl::Status s = WaitForPort(port_, timeout);
  if (!s.ok()) return absl::InternalError(absl::StrCat(s.message(), "\ncoordinator log:\n", Tail(CoordinatorLog())));
  return absl::OkStatus();
}

absl::Status Farm::StartCoordinator() {
  RETURN_IF_ERROR(StartCoordinatorNoWait());
  return WaitForCoordinator(absl::Seconds(20));
}

absl::Status Farm::StopCoordinator() {
  if (coordinator_) coordinator_->Stop(absl::Seconds(10));
  coordinator_.reset();
  return absl::OkStatus();
}

absl::Status Farm::KillCoordinator() {
  if (coordinator_) {
    RETURN_IF_ERROR(coordinator_->Signal(SIGKILL));
    coordinator_->Wait(absl::Seconds(10));
  }
  coordinator_.reset();
  return absl::OkStatus();
}

absl::StatusOr<int> Farm::StartWorker() { return StartWorker(WorkerSpec()); }

absl::StatusOr<int> Farm::StartWorker(const WorkerSpec& spec) {
  const int index = static_cast<int>(workers_.size());
  SpawnOptions o;
  o.argv = {SDFARM_WORKER_BIN, "--coordinator", address_,
            "--model", spec.model_dir.empty() ? options_.model_dir : spec.model_dir,
            "--batch-size", absl::StrCat(options_.batch_size), "--worker-id", spec.worker_id.empty() ? WorkerId(index) : spec.worker_id,
            "--threads", "1"};
  if (!options_.engine.empty()) o.argv.insert(o.argv.end(), {"--engine", options_.engine});
  if (!spec.model_name.empty()) {
    o.argv.insert(o.argv.end(), {"--model-name", spec.model_name});
  } else if (!options_.engine.empty()) {
    o.argv.insert(o.argv.end(), {"--model-name", "tiny-sd"});
  }
  o.argv.insert(o.argv.end(), spec.extra_args.begin(), spec.extra_args.end());
  o.env = options_.worker_env;
  o.env.insert(o.env.end(), spec.env.begin(), spec.env.end());
  o.env.push_back({"SDFARM_WORKER_TOKEN", worker_token_});
  o.env.push_back({"OMP_NUM_THREADS", "1"});
  o.log_file = worker_log_path(index);
  ASSIGN_OR_RETURN(auto p, Subprocess::Spawn(o));
  workers_.push_back(std::move(p));
  stopped_.push_back(false);
  return index;
}

std::vector<int> Farm::RunningWorkers() {
  std::vector<int> out;
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i] && workers_[i]->running()) out.push_back(static_cast<int>(i));
  }
  return out;
}

absl::Status Farm::KillWorker(int i) {
  if (i < 0 || i >= num_workers()) return absl::InvalidArgumentError(absl::StrCat("no worker ", i));
  RETURN_IF_ERROR(workers_[i]->Signal(SIGKILL));
  if (!workers_[i]->Wait(absl::Seconds(10)).has_value()) {
    return absl::InternalError(absl::StrCat("worker ", i, " survived SIGKILL for 10 s"));
  }
  stopped_[i] = false;
  return absl::OkStatus();
}

absl::Status Farm::StopWorker(int i) {
  if (i < 0 || i >= num_workers()) return absl::InvalidArgumentError(absl::StrCat("no worker ", i));
  RETURN_IF_ERROR(workers_[i]->Signal(SIGSTOP));
  stopped_[i] = true;
  return absl::OkStatus();
}

absl::Status Farm::ContinueWorker(int i) {
  if (i < 0 || i >= num_workers()) return absl::InvalidArgumentError(absl::StrCat("no worker ", i));
  RETURN_IF_ERROR(workers_[i]->Signal(SIGCONT));
  stopped_[i] = false;
  return absl::OkStatus();
}

absl::Status Farm::RestartRedis(bool crash) {
  if (crash) RETURN_IF_ERROR(redis_->Kill());
  return redis_->Restart();
}

absl::StatusOr<std::string> Farm::Submit(const std::string& spec_json, bool wait_for_workers) {
  sdfarm::v1::SubmitRequest req;
  req.set_spec_json(spec_json);
  req.set_wait_for_workers(wait_for_workers);
  req.set_request_id(absl::StrCat("test-", absl::ToUnixNanos(absl::Now())));
  sdfarm::v1::SubmitResponse resp;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, client_token_, absl::Seconds(20));
  RETURN_IF_ERROR(FromGrpc(client_->Submit(&ctx, req, &resp)));
  return resp.sweep_id();
}

absl::StatusOr<sdfarm::v1::SweepStatus> Farm::Status(const std::string& sweep) {
  sdfarm::v1::SweepRef ref;
  ref.set_sweep(sweep);
  sdfarm::v1::SweepStatus status;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, client_token_, absl::Seconds(10));
  RETURN_IF_ERROR(FromGrpc(client_->Status(&ctx, ref, &status)));
  return status;
}

absl::StatusOr<sdfarm::v1::SweepStatus> Farm::WaitForState(const std::string& sweep, sdfarm::v1::SweepState state,
                                                          absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  sdfarm::v1::SweepStatus last;
  while (absl::Now() < deadline) {
    auto s = Status(sweep);
    if (s.ok()) {
      last = *s;
      if (s->state() == state) return *s;
    } else if (s.status().code() != absl::StatusCode::kUnavailable &&
               s.status().code() != absl::StatusCode::kDeadlineExceeded) {
      return s.status();
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  return absl::DeadlineExceededError(absl::StrCat("sweep ", sweep, " did not reach state ", state, "; last status: ",
                                                  last.ShortDebugString(), "\n", Logs()));
}

absl::StatusOr<sdfarm::v1::WorkersResponse> Farm::Workers() {
  sdfarm::v1::WorkersResponse resp;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, client_token_, absl::Seconds(10));
  RETURN_IF_ERROR(FromGrpc(client_->Workers(&ctx, sdfarm::v1::WorkersRequest(), &resp)));
  return resp;
}

std::string Farm::Logs() const {
  std::string out = "--- coordinator.log\n" + Tail(CoordinatorLog());
  for (size_t i = 0; i < workers_.size(); ++i) {
    out += absl::StrCat("\n--- worker-", i, ".log\n", Tail(WorkerLog(static_cast<int>(i)), 2000));
  }
  return out;
}

std::string Farm::CoordinatorLog() const { return ReadAll(coordinator_log_path()); }
std::string Farm::WorkerLog(int i) const { return ReadAll(worker_log_path(i)); }
std::string Farm::worker_log_path(int i) const { return absl::StrCat(dir_, "/worker-", i, ".log"); }

RunResult RunProgram(const std::vector<std::string>& argv, const std::vector<std::pair<std::string, std::string>>& env,
                     absl::Duration timeout) {
  RunResult result;
  std::string templ = TempRoot() + "/sdfarm-run-XXXXXX";
  int fd = mkstemp(templ.data());
  if (fd < 0) {
    result.output = "mkstemp under " + TempRoot() + " failed";
    return result;
  }
  close(fd);
  SpawnOptions o;
  o.argv = argv;
  o.env = env;
  o.log_file = templ;
  auto p = Subprocess::Spawn(o);
  if (!p.ok()) {
    result.output = p.status().ToString();
    unlink(templ.c_str());
    return result;
  }
  auto code = (*p)->Wait(timeout);
  result.exit_code = code ? *code : (*p)->Stop(absl::Seconds(5)) + 1000;  // 1000+: timed out
  result.output = ReadAll(templ);
  unlink(templ.c_str());
  return result;
}

int MaxPixelDifference(const engine::Image& a, const engine::Image& b) {
  if (a.width != b.width || a.height != b.height || a.channels != b.channels || a.pixels.size() != b.pixels.size()) {
    return 256;
  }
  int worst = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) worst = std::max(worst, std::abs(int{a.pixels[i]} - int{b.pixels[i]}));
  return worst;
}

std::vector<nlohmann::json> ReadManifest(const std::string& dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(dir + "/metadata.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

std::string PngParameters(const std::string& path) {
  auto text = engine::ReadPngText(path);
  if (!text.ok()) return "";
  for (const auto& [k, v] : *text) {
    if (k == "parameters") return v;
  }
  return "";
}

}  // namespace sdfarm::testing
