// A whole farm on loopback for end-to-end tests: a real redis-server (from
// PATH, free port, AOF with appendfsync always), the sdfarm-coordinator
// binary and N sdfarm-worker processes, each a child process with its log in
// the farm's temp dir; plus a ClientService stub holding the client token.
//
//   ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2}));
//   ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec_json));
//   ASSERT_OK_AND_ASSIGN(auto status, farm->WaitForState(id, sdfarm::v1::DONE, absl::Minutes(3)));
//
// Chaos helpers: KillWorker (SIGKILL), StopWorker/ContinueWorker (SIGSTOP,
// SIGCONT), RestartRedis (crash or clean stop, same port and AOF), the
// coordinator's and each worker's log. Worker i runs as "w<i>".
//
// Everything is stopped and removed by the destructor (SDFARM_KEEP_TEST_DIRS=1
// keeps the temp dir with its logs and outputs).
#ifndef SDFARM_TESTS_FARM_FARM_FIXTURE_H_
#define SDFARM_TESTS_FARM_FARM_FIXTURE_H_

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/subprocess.h"
#include "sdfarm.grpc.pb.h"
#include "tests/common/redis_server_fixture.h"
#include "worker/engine/png_io.h"

// ASSERT that a StatusOr expression is ok and move its value into `lhs`
// (which may declare it: FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start(...))).
#define FARM_ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  FARM_ASSERT_OK_AND_ASSIGN_IMPL_(SDFARM_FARM_CONCAT_(so_, __LINE__), lhs, rexpr)
#define SDFARM_FARM_CONCAT_INNER_(a, b) a##b
#define SDFARM_FARM_CONCAT_(a, b) SDFARM_FARM_CONCAT_INNER_(a, b)
#define FARM_ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                   \
  ASSERT_TRUE(tmp.ok()) << tmp.status().ToString();     \
  lhs = std::move(tmp).value()

namespace sdfarm::testing {

std::string SharedPath(const std::string& relative);  // under SDFARM_SHARED_DIR
// $TMPDIR, else /tmp (the sanitizer wrapper points TMPDIR at a folder it checks).
std::string TempRoot();
// A fresh folder <TempRoot()>/sdfarm-<tag>-XXXXXX; "" when mkdtemp fails.
std::string MakeTempDir(const std::string& tag);

struct FarmOptions {
  int workers = 2;
  std::string model_dir;          // default: ../shared/models/tiny-sd
  std::string engine;             // "" (the real engine) or "synthetic:MS"
  int batch_size = 4;
  double lease_seconds = 4;
  int max_attempts = 3;
  int job_size = 4;
  std::vector<std::pair<std::string, std::string>> worker_env;  // e.g. SDFARM_TEST_FAIL_PROMPT
  int window = 0;                                // coordinator --window; 0: its default
  std::vector<std::string> coordinator_args;     // more coordinator flags
  RedisServerOptions redis;                      // e.g. maxmemory_policy
  // Coordinator --leader-lease: short, so that a restart after KillCoordinator
  // waits little for the killed one's lease.
  double leader_lease_seconds = 3;
};

// Overrides for one worker (StartWorker(spec)).
struct WorkerSpec {
  std::string model_dir;   // default: FarmOptions::model_dir
  std::string model_name;  // --model-name; default: the folder's name ("tiny-sd" for the synthetic engine)
  std::string worker_id;   // --worker-id; default: WorkerId(index)
  std::vector<std::string> extra_args;
  std::vector<std::pair<std::string, std::string>> env;  // after FarmOptions::worker_env
};

class Farm {
 public:
  static absl::StatusOr<std::unique_ptr<Farm>> Start(FarmOptions options);
  ~Farm();

  // Coordinator lifecycle (same port, same Redis, same output root).
  // StartCoordinator waits until it serves; StartCoordinatorNoWait does not
  // (then WaitForCoordinator). Children die with the thread that started
  // them (PR_SET_PDEATHSIG): start them from a thread that outlives them.
  absl::Status StartCoordinator();
  absl::Status StartCoordinatorNoWait();
  absl::Status WaitForCoordinator(absl::Duration timeout);
  absl::Status StopCoordinator();  // SIGTERM
  absl::Status KillCoordinator();  // SIGKILL
  // The Redis URL the coordinator is started with from now on (e.g. through
  // a TcpProxy). "": redis()->url(). (Workers never get one.)
  void set_coordinator_redis_url(std::string url) { coordinator_redis_url_ = std::move(url); }
  // The coordinator's process (nullptr while stopped).
  Subprocess* coordinator() { return coordinator_.get(); }

  // Starts one more worker; returns its index. Its id is WorkerId(index).
  absl::StatusOr<int> StartWorker();
  absl::StatusOr<int> StartWorker(const WorkerSpec& spec);
  Subprocess* worker(int i) { return workers_[i].get(); }
  int num_workers() const { return static_cast<int>(workers_.size()); }
  static std::string WorkerId(int i) { return "w" + std::to_string(i); }
  // Indexes of the workers still running (not reaped).
  std::vector<int> RunningWorkers();
  // SIGKILL and reap (a crash: its job is redelivered after the lease).
  absl::Status KillWorker(int i);
  // SIGSTOP / SIGCONT (a frozen machine, a long GC pause).
  absl::Status StopWorker(int i);
  absl::Status ContinueWorker(int i);

  RedisServer* redis() { return redis_.get(); }
  // Restarts redis-server on the same port and data dir: crash = SIGKILL
  // (what was acknowledged survives through the AOF, appendfsync always),
  // else SIGTERM. Waits until it answers PING again.
  absl::Status RestartRedis(bool crash = true);

  const std::string& address() const { return address_; }
  const std::string& output_root() const { return output_root_; }
  const std::string& client_token() const { return client_token_; }
  const std::string& worker_token() const { return worker_token_; }
  const std::string& dir() const { return dir_; }
  sdfarm::v1::ClientService::Stub* client() { return client_.get(); }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

  // Submits spec_json with the client token.
  // wait_for_workers: accepted while no worker of its model is live (most
  // tests start their workers after submitting).
  absl::StatusOr<std::string> Submit(const std::string& spec_json, bool wait_for_workers = true);
  absl::StatusOr<sdfarm::v1::SweepStatus> Status(const std::string& sweep);
  // Polls Status until the sweep reaches `state` (UNAVAILABLE while the
  // coordinator restarts is retried); DeadlineExceeded with the last status.
  absl::StatusOr<sdfarm::v1::SweepStatus> WaitForState(const std::string& sweep, sdfarm::v1::SweepState state,
                                                       absl::Duration timeout);
  absl::StatusOr<sdfarm::v1::WorkersResponse> Workers();
  // Every log of the farm (coordinator, workers), for failure messages.
  std::string Logs() const;
  // Whole logs. The coordinator's spans its restarts (appended).
  std::string CoordinatorLog() const;
  std::string WorkerLog(int i) const;
  std::string coordinator_log_path() const { return dir_ + "/coordinator.log"; }
  std::string worker_log_path(int i) const;

 private:
  explicit Farm(FarmOptions options) : options_(std::move(options)) {}

  FarmOptions options_;
  std::string dir_, output_root_, address_, client_token_, worker_token_, coordinator_redis_url_;
  int port_ = 0;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<Subprocess> coordinator_;
  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::vector<bool> stopped_;  // SIGSTOPped, not continued yet
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sdfarm::v1::ClientService::Stub> client_;
};

// Result of running a program to completion.
struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};
RunResult RunProgram(const std::vector<std::string>& argv, const std::vector<std::pair<std::string, std::string>>& env,
                     absl::Duration timeout);

// The largest per-channel difference between two images (256 when their
// shapes differ). The farm renders an image in a batch with others, the
// reference renderer alone: CPU GEMM and convolution kernels round
// differently for other batch sizes, so pixels agree to within a level or
// two (the tolerance of the diffusers parity tests), not always bit for bit.
int MaxPixelDifference(const engine::Image& a, const engine::Image& b);
inline constexpr int kBatchPixelTolerance = 2;

// Every row of <dir>/metadata.jsonl, in order.
std::vector<nlohmann::json> ReadManifest(const std::string& dir);
// The A1111 "parameters" text of a PNG file ("" when it has none).
std::string PngParameters(const std::string& path);

// The whole file ("" when it cannot be read).
std::string ReadFileOrEmpty(const std::string& path);

}  // namespace sdfarm::testing

#endif  // SDFARM_TESTS_FARM_FARM_FIXTURE_H_
