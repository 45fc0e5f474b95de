// Load on one coordinator: W concurrent Watch streams and S submitters (each
// looping Submit + Status) for a bounded time, against a real redis-server
// and the real sdfarm-coordinator binary. Prints JSON: call counts, errors,
// p50/p99 latency of Submit and Status, watch events, and the coordinator's
// resident memory (start, peak, end). Exits 1 if any call failed.
//
//   build/tests/bench/sdfarm-farm-load-bench --watchers 200 --submitters 50 --seconds 20
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "common/subprocess.h"
#include "sdfarm.grpc.pb.h"
#include "tests/common/redis_server_fixture.h"

namespace {

namespace pb = ::sdfarm::v1;

int Flag(int argc, char** argv, const std::string& name, int def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return std::atoi(argv[i + 1]);
  }
  return def;
}

double RssMb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return 0;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

nlohmann::json Spec(const std::string& name, const std::string& seeds) {
  return {{"name", name}, {"model", "nobody"}, {"prompts", {"load test"}}, {"seeds", seeds}, {"steps", 1},
          {"sizes", {"64x64"}}};
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help") {
      std::printf("Usage: sdfarm-farm-load-bench [--watchers 200] [--submitters 50] [--seconds 20]\n");
      return 0;
    }
  }
  const int watchers = Flag(argc, argv, "watchers", 200);
  const int submitters = Flag(argc, argv, "submitters", 50);
  const int seconds = Flag(argc, argv, "seconds", 20);

  auto redis = sdfarm::testing::RedisServer::Start();
  if (!redis.ok()) {
    std::fprintf(stderr, "%s\n", redis.status().ToString().c_str());
    return 1;
  }
  char dir[] = "/tmp/sdfarm-load-XXXXXX";
  if (mkdtemp(dir) == nullptr) return 1;
  auto port = sdfarm::PickFreePort();
  const std::string address = absl::StrCat("127.0.0.1:", *port);
  sdfarm::SpawnOptions o;
  o.argv = {SDFARM_COORDINATOR_BIN, "--listen", address, "--redis-url", (*redis)->url(), "--output-root",
            std::string(dir) + "/out", "--max-watchers", absl::StrCat(watchers + 10)};
  o.env = {{"SDFARM_CLIENT_TOKEN", "client-token"}, {"SDFARM_WORKER_TOKEN", "worker-token"}};
  o.log_file = std::string(dir) + "/coordinator.log";
  auto coordinator = sdfarm::Subprocess::Spawn(o);
  if (!coordinator.ok() || !sdfarm::WaitForPort(*port, absl::Seconds(20)).ok()) {
    std::fprintf(stderr, "coordinator did not start; see %s\n", o.log_file.c_str());
    return 1;
  }
  const pid_t pid = (*coordinator)->pid();
  auto channel = sdfarm::MakeChannel(address, "");
  auto stub = pb::ClientService::NewStub(*channel);

  // The sweep everyone watches: for a model no worker serves, so it stays running.
  {
    grpc::ClientContext ctx;
    sdfarm::PrepareContext(&ctx, "client-token", absl::Seconds(10));
    pb::SubmitRequest req;
    req.set_spec_json(Spec("watched", "0-999").dump());
    req.set_wait_for_workers(true);  // no workers: only the coordinator is measured
    pb::SubmitResponse resp;
    if (!stub->Submit(&ctx, req, &resp).ok()) return 1;
  }
  absl::SleepFor(absl::Milliseconds(500));
  const double rss_start = RssMb(pid);
  double rss_peak = rss_start;

  std::atomic<bool> stop{false};
  std::atomic<int64_t> watch_events{0}, watch_errors{0}, submit_errors{0}, status_errors{0};
  std::mutex mu;
  std::vector<double> submit_ms, status_ms;
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_ctx(watchers);
  std::vector<std::thread> threads;
  // Each watcher on its own channel, as separate clients would be.
  for (int i = 0; i < watchers; ++i) {
    watch_ctx[i] = std::make_unique<grpc::ClientContext>();
    threads.emplace_back([&, i] {
      grpc::ChannelArguments args;
      args.SetInt("sdfarm-watcher", i);  // a distinct channel (and connection) per watcher
      auto ch = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
      auto s = pb::ClientService::NewStub(ch);
      sdfarm::PrepareContext(watch_ctx[i].get(), "client-token", absl::Seconds(seconds + 30));
      pb::SweepRef ref;
      ref.set_sweep("watched");
      auto reader = s->Watch(watch_ctx[i].get(), ref);
      pb::WatchEvent ev;
      while (reader->Read(&ev)) ++watch_events;
      grpc::Status st = reader->Finish();
      if (!st.ok() && !(stop && st.error_code() == grpc::StatusCode::CANCELLED)) {
        ++watch_errors;
        std::fprintf(stderr, "watch %d: %s\n", i, st.error_message().c_str());
      }
    });
  }
  for (int i = 0; i < submitters; ++i) {
    threads.emplace_back([&, i] {
      std::vector<double> my_submit, my_status;
      for (int n = 0; !stop; ++n) {
        const std::string name = absl::StrCat("load-", i, "-", n);
        absl::Time t0 = absl::Now();
        grpc::ClientContext ctx;
        sdfarm::PrepareContext(&ctx, "client-token", absl::Seconds(30));
        pb::SubmitRequest req;
        req.set_spec_json(Spec(name, "0").dump());
        req.set_wait_for_workers(true);
        req.set_request_id(name);
        pb::SubmitResponse resp;
        grpc::Status st = stub->Submit(&ctx, req, &resp);
        my_submit.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        if (!st.ok()) {
          ++submit_errors;
          std::fprintf(stderr, "submit: %s\n", st.error_message().c_str());
          continue;
        }
        t0 = absl::Now();
        grpc::ClientContext sctx;
        sdfarm::PrepareContext(&sctx, "client-token", absl::Seconds(30));
        pb::SweepRef ref;
        ref.set_sweep(resp.sweep_id());
        pb::SweepStatus status;
        st = stub->Status(&sctx, ref, &status);
        my_status.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        if (!st.ok()) ++status_errors;
      }
      std::lock_guard<std::mutex> lock(mu);
      submit_ms.insert(submit_ms.end(), my_submit.begin(), my_submit.end());
      status_ms.insert(status_ms.end(), my_status.begin(), my_status.end());
    });
  }
  const absl::Time end = absl::Now() + absl::Seconds(seconds);
  while (absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(250));
    rss_peak = std::max(rss_peak, RssMb(pid));
  }
  const double rss_loaded = RssMb(pid);
  stop = true;
  for (auto& c : watch_ctx) c->TryCancel();
  for (auto& t : threads) t.join();
  const int64_t sweeps = static_cast<int64_t>(submit_ms.size()) - submit_errors + 1;

  nlohmann::json out = {
      {"benchmark", "farm_load"},
      {"watchers", watchers},
      {"submitters", submitters},
      {"seconds", seconds},
      {"submits", submit_ms.size()},
      {"statuses", status_ms.size()},
      {"submit_errors", submit_errors.load()},
      {"status_errors", status_errors.load()},
      {"watch_errors", watch_errors.load()},
      {"watch_events", watch_events.load()},
      {"submit_ms", {{"p50", Percentile(submit_ms, 0.5)}, {"p99", Percentile(submit_ms, 0.99)}}},
      {"status_ms", {{"p50", Percentile(status_ms, 0.5)}, {"p99", Percentile(status_ms, 0.99)}}},
      {"coordinator_rss_mb",
       {{"start", rss_start}, {"peak", rss_peak}, {"end", rss_loaded},
        {"per_sweep_kb", sweeps > 0 ? (rss_loaded - rss_start) * 1024.0 / static_cast<double>(sweeps) : 0}}},
      {"sweeps", sweeps}};
  std::printf("%s\n", out.dump(2).c_str());
  (*coordinator)->Stop(absl::Seconds(10));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return submit_errors + status_errors + watch_errors == 0 ? 0 : 1;
}
