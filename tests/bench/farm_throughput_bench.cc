// How much idle load slows a served sweep (issue 12): a real redis-server,
// the sdfarm-coordinator binary and W synthetic workers render one sweep of
// N images, with K sweeps queued for models nobody serves and/or I idle Watch
// streams (on one of those sweeps) beside it. Prints JSON: each run's seconds
// from submit to DONE and the coordinator's CPU seconds meanwhile, and their
// medians. --coordinator runs another build (e.g. the one before a change);
// the same workers are used.
//
//   build/tests/bench/sdfarm-farm-throughput-bench --unserved-sweeps 2000 --runs 3
//   build/tests/bench/sdfarm-farm-throughput-bench --idle-watchers 1000 --coordinator OLD/sdfarm-coordinator
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_util.h"
#include "common/subprocess.h"
#include "sdfarm.grpc.pb.h"
#include "tests/common/redis_server_fixture.h"

namespace {

namespace pb = ::sdfarm::v1;

std::string Flag(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return argv[i + 1];
  }
  return def;
}

double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const size_t close = text.rfind(") ");
  if (close == std::string::npos) return 0;
  std::vector<std::string> f = absl::StrSplit(text.substr(close + 2), ' ');
  if (f.size() < 13) return 0;
  return (std::stod(f[11]) + std::stod(f[12])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

nlohmann::json Spec(const std::string& name, const std::string& model, int images) {
  return {{"name", name}, {"model", model}, {"prompts", {"load test"}}, {"seeds", absl::StrCat("0-", images - 1)},
          {"steps", 1}, {"sizes", {"64x64"}}};
}

bool Submit(pb::ClientService::Stub* stub, const nlohmann::json& spec, std::string* id) {
  grpc::ClientContext ctx;
  sdfarm::PrepareContext(&ctx, "client-token", absl::Seconds(30));
  pb::SubmitRequest req;
  req.set_spec_json(spec.dump());
  req.set_wait_for_workers(true);
  pb::SubmitResponse resp;
  grpc::Status s = stub->Submit(&ctx, req, &resp);
  if (!s.ok()) std::fprintf(stderr, "submit: %s\n", s.error_message().c_str());
  if (id) *id = resp.sweep_id();
  return s.ok();
}

struct Run {
  double seconds = -1, coordinator_cpu = 0;
};

Run OneRun(const std::string& coordinator_bin, int workers, int images, int unserved, int watchers) {
  Run run;
  auto redis = sdfarm::testing::RedisServer::Start();
  if (!redis.ok()) return run;
  char dir[] = "/tmp/sdfarm-throughput-XXXXXX";
  if (mkdtemp(dir) == nullptr) return run;
  auto port = sdfarm::PickFreePort();
  const std::string address = absl::StrCat("127.0.0.1:", *port);
  sdfarm::SpawnOptions o;
  o.argv = {coordinator_bin, "--listen", address, "--redis-url", (*redis)->url(), "--output-root",
            std::string(dir) + "/out", "--max-watchers", absl::StrCat(watchers + 10)};
  // A build with per-token quotas: lift them (the point is the cost of the load).
  auto help = sdfarm::Subprocess::Spawn({.argv = {coordinator_bin, "--help"}, .log_file = std::string(dir) + "/help"});
  if (help.ok()) (*help)->Wait(absl::Seconds(10));
  std::ifstream help_in(std::string(dir) + "/help");
  std::stringstream help_text;
  help_text << help_in.rdbuf();
  if (help_text.str().find("max-waiting-sweeps-per-token") != std::string::npos) {
    o.argv.insert(o.argv.end(), {"--max-waiting-sweeps-per-token", "0", "--max-unfinished-sweeps-per-token", "0",
                                 "--max-watchers-per-token", "0"});
  }
  o.env = {{"SDFARM_CLIENT_TOKEN", "client-token"}, {"SDFARM_WORKER_TOKEN", "worker-token"}};
  o.log_file = std::string(dir) + "/coordinator.log";
  auto coordinator = sdfarm::Subprocess::Spawn(o);
  if (!coordinator.ok() || !sdfarm::WaitForPort(*port, absl::Seconds(20)).ok()) return run;
  auto channel = sdfarm::MakeChannel(address, "");
  auto stub = pb::ClientService::NewStub(*channel);

  for (int i = 0; i < unserved; ++i) {
    if (!Submit(stub.get(), Spec(absl::StrCat("unserved-", i), absl::StrCat("nobody-", i), 4), nullptr)) return run;
  }
  std::string watched;
  if (watchers > 0 && !Submit(stub.get(), Spec("watched", "nobody-watched", 4), &watched)) return run;
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_ctx;
  std::vector<std::thread> watch_threads;
  for (int i = 0; i < watchers; ++i) {
    watch_ctx.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* ctx = watch_ctx.back().get();
    sdfarm::PrepareContext(ctx, "client-token", absl::Minutes(30));
    watch_threads.emplace_back([ctx, address, watched, i] {
      // A channel (and connection) per watcher, as separate clients would have.
      grpc::ChannelArguments args;
      args.SetInt("sdfarm-watcher", i);
      auto own = pb::ClientService::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      pb::SweepRef ref;
      ref.set_sweep(watched);
      auto reader = own->Watch(ctx, ref);
      pb::WatchEvent ev;
      while (reader->Read(&ev)) {
      }
      (void)reader->Finish();
    });
  }
  std::vector<std::unique_ptr<sdfarm::Subprocess>> worker_procs;
  for (int i = 0; i < workers; ++i) {
    sdfarm::SpawnOptions w;
    w.argv = {SDFARM_WORKER_BIN, "--coordinator", address, "--model", SDFARM_SHARED_DIR "/models/tiny-sd",
              "--engine", "synthetic:1", "--model-name", "tiny-sd", "--worker-id", absl::StrCat("w", i),
              "--threads", "1"};
    w.env = {{"SDFARM_WORKER_TOKEN", "worker-token"}, {"OMP_NUM_THREADS", "1"}};
    w.log_file = absl::StrCat(dir, "/worker", i, ".log");
    auto p = sdfarm::Subprocess::Spawn(w);
    if (p.ok()) worker_procs.push_back(std::move(*p));
  }
  absl::SleepFor(absl::Seconds(3));  // workers registered and idle
  const pid_t pid = (*coordinator)->pid();
  const double cpu0 = CpuSeconds(pid);
  const absl::Time t0 = absl::Now();
  std::string id;
  if (Submit(stub.get(), Spec("served", "tiny-sd", images), &id)) {
    const absl::Time deadline = t0 + absl::Minutes(10);
    while (absl::Now() < deadline) {
      grpc::ClientContext ctx;
      sdfarm::PrepareContext(&ctx, "client-token", absl::Seconds(30));
      pb::SweepRef ref;
      ref.set_sweep(id);
      pb::SweepStatus st;
      if (stub->Status(&ctx, ref, &st).ok() && st.state() == pb::DONE) {
        run.seconds = absl::ToDoubleSeconds(absl::Now() - t0);
        break;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  run.coordinator_cpu = CpuSeconds(pid) - cpu0;
  for (auto& c : watch_ctx) c->TryCancel();
  for (auto& t : watch_threads) t.join();
  for (auto& w : worker_procs) w->Stop(absl::Seconds(10));
  (*coordinator)->Stop(absl::Seconds(10));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help") {
      std::printf(
          "Usage: sdfarm-farm-throughput-bench [--workers 2] [--images 200] [--unserved-sweeps 0]\n"
          "         [--idle-watchers 0] [--runs 3] [--coordinator BIN]\n");
      return 0;
    }
  }
  const std::string bin = Flag(argc, argv, "coordinator", SDFARM_COORDINATOR_BIN);
  const int workers = std::stoi(Flag(argc, argv, "workers", "2"));
  const int images = std::stoi(Flag(argc, argv, "images", "200"));
  const int unserved = std::stoi(Flag(argc, argv, "unserved-sweeps", "0"));
  const int watchers = std::stoi(Flag(argc, argv, "idle-watchers", "0"));
  const int runs = std::stoi(Flag(argc, argv, "runs", "3"));
  std::vector<double> seconds, cpu;
  nlohmann::json each = nlohmann::json::array();
  for (int r = 0; r < runs; ++r) {
    const Run run = OneRun(bin, workers, images, unserved, watchers);
    if (run.seconds < 0) {
      std::fprintf(stderr, "run %d failed\n", r);
      return 1;
    }
    seconds.push_back(run.seconds);
    cpu.push_back(run.coordinator_cpu);
    each.push_back({{"seconds", run.seconds}, {"coordinator_cpu_s", run.coordinator_cpu}});
  }
  nlohmann::json out = {{"benchmark", "farm_throughput"},
                        {"coordinator", bin},
                        {"workers", workers},
                        {"images", images},
                        {"unserved_sweeps", unserved},
                        {"idle_watchers", watchers},
                        {"runs", each},
                        {"median_seconds", Median(seconds)},
                        {"median_coordinator_cpu_s", Median(cpu)}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
