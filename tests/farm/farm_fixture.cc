#include "tests/farm/farm_fixture.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "common/status_macros.h"

namespace sdfarm::testing {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& text, size_t n = 4000) {
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

}  // namespace

std::string SharedPath(const std::string& relative) { return std::string(SDFARM_SHARED_DIR) + "/" + relative; }

absl::StatusOr<std::unique_ptr<Farm>> Farm::Start(FarmOptions options) {
  std::unique_ptr<Farm> farm(new Farm(std::move(options)));
  if (farm->options_.model_dir.empty()) farm->options_.model_dir = SharedPath("models/tiny-sd");
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/sdfarm-farm-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) return absl::InternalError("mkdtemp failed");
  farm->dir_ = templ;
  farm->output_root_ = farm->dir_ + "/out";
  farm->client_token_ = "client-" + std::to_string(getpid()) + "-secret";
  farm->worker_token_ = "worker-" + std::to_string(getpid()) + "-secret";
  ASSIGN_OR_RETURN(farm->redis_, RedisServer::Start());
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

absl::Status Farm::StartCoordinator() {
  SpawnOptions o;
  o.argv = {SDFARM_COORDINATOR_BIN,
            "--listen", address_,
            "--redis-url", redis_->url(),
            "--output-root", output_root_,
            "--lease", absl::StrCat(options_.lease_seconds),
            "--max-attempts", absl::StrCat(options_.max_attempts),
            "--job-size", absl::StrCat(options_.job_size)};
  o.env = {{"SDFARM_CLIENT_TOKEN", client_token_}, {"SDFARM_WORKER_TOKEN", worker_token_}};
  o.log_file = dir_ + "/coordinator.log";
  ASSIGN_OR_RETURN(coordinator_, Subprocess::Spawn(o));
  absl::Status s = WaitForPort(port_, absl::Seconds(20));
  if (!s.ok()) return absl::InternalError(absl::StrCat(s.message(), "\ncoordinator log:\n", Tail(ReadAll(o.log_file))));
  return absl::OkStatus();
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

absl::StatusOr<int> Farm::StartWorker() {
  const int index = static_cast<int>(workers_.size());
  SpawnOptions o;
  o.argv = {SDFARM_WORKER_BIN, "--coordinator", address_, "--model", options_.model_dir,
            "--batch-size", absl::StrCat(options_.batch_size), "--worker-id", absl::StrCat("w", index),
            "--threads", "1"};
  if (!options_.engine.empty()) {
    o.argv.insert(o.argv.end(), {"--engine", options_.engine, "--model-name", "tiny-sd"});
  }
  o.env = options_.worker_env;
  o.env.push_back({"SDFARM_WORKER_TOKEN", worker_token_});
  o.env.push_back({"OMP_NUM_THREADS", "1"});
  o.log_file = absl::StrCat(dir_, "/worker-", index, ".log");
  ASSIGN_OR_RETURN(auto p, Subprocess::Spawn(o));
  workers_.push_back(std::move(p));
  return index;
}

absl::StatusOr<std::string> Farm::Submit(const std::string& spec_json) {
  sdfarm::v1::SubmitRequest req;
  req.set_spec_json(spec_json);
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
  std::string out = "--- coordinator.log\n" + Tail(ReadAll(dir_ + "/coordinator.log"));
  for (size_t i = 0; i < workers_.size(); ++i) {
    out += absl::StrCat("\n--- worker-", i, ".log\n", Tail(ReadAll(absl::StrCat(dir_, "/worker-", i, ".log")), 2000));
  }
  return out;
}

RunResult RunProgram(const std::vector<std::string>& argv, const std::vector<std::pair<std::string, std::string>>& env,
                     absl::Duration timeout) {
  RunResult result;
  char templ[] = "/tmp/sdfarm-run-XXXXXX";
  int fd = mkstemp(templ);
  if (fd < 0) return result;
  close(fd);
  SpawnOptions o;
  o.argv = argv;
  o.env = env;
  o.log_file = templ;
  auto p = Subprocess::Spawn(o);
  if (!p.ok()) {
    result.output = p.status().ToString();
    unlink(templ);
    return result;
  }
  auto code = (*p)->Wait(timeout);
  result.exit_code = code ? *code : (*p)->Stop(absl::Seconds(5)) + 1000;  // 1000+: timed out
  result.output = ReadAll(templ);
  unlink(templ);
  return result;
}

}  // namespace sdfarm::testing
