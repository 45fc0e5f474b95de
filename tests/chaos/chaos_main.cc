// sdfarm-chaos: a whole farm (redis-server with AOF and appendfsync always,
// sdfarm-coordinator, N sdfarm-worker processes on the synthetic engine)
// renders one sweep while it is being broken on purpose:
//
//   - every --seconds-between-kills a random worker gets SIGKILL and a fresh
//     one starts (its job comes back after the lease);
//   - --sigstops times a worker is frozen (SIGSTOP) in the middle of a job,
//     kept frozen until another worker has taken the job over, and thawed
//     (SIGCONT) while Redis holds writes for a moment (CLIENT PAUSE WRITE),
//     so that it cannot learn from a lease renewal (its heartbeat, which the
//     coordinator answers from Redis) that it lost the job: it
//     finishes the job and reports it late, and the coordinator must refuse
//     the report (ReportAck.accepted = false) and write nothing;
//   - the coordinator is restarted --coordinator-restarts times (SIGKILL, then
//     SIGTERM, alternating) and redis-server --redis-restarts times (SIGKILL:
//     what was acknowledged must survive through the AOF);
//   - --dishonest times a dishonest worker (a gRPC client with the worker
//     token) claims a job, forges reports and failures for other workers'
//     jobs (white images carrying the right parameters), every one of which
//     must be refused, then vanishes holding its job;
//   - optionally (--drop-coordinator-redis-replies N) every N-th Redis reply
//     to the coordinator is lost after the command ran;
//   - --second-coordinators times a second sdfarm-coordinator is started on
//     the same output root, then on another root with the same Redis: both
//     must refuse to start (lock, leader lease) and change nothing;
//   - --redis-rollbacks times Redis's data folder is copied and, later in the
//     sweep, redis-server is killed and started from the copy: the
//     coordinator must notice, report and repair the rollback;
//   - --disk-fulls times the output disk fills up: the output root is a
//     small tmpfs of its own (mounted before the coordinator starts; needs
//     root or CAP_SYS_ADMIN, else the run stops with a message saying so), a
//     file fills it mid-run until the sweep's status reports that images
//     cannot be stored, stays a few seconds, and is deleted: the held jobs
//     must come back without a failure counted or a job dead-lettered.
//
// At the end it checks the output folder (exactly the expected images, each a
// valid PNG whose embedded parameters match its metadata.jsonl row and its
// item, one row per image, no temporary or stray file), the sweep's state in
// the coordinator and in Redis (every job done once, nothing queued, pending
// or dead-lettered), and prints a JSON summary on stdout. Exit status 0 when
// everything holds, 1 when anything is off, 2 for bad flags.
//
// Short form (ctest -L chaos): --images 300. Long form: see tests/chaos/README.md.
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <filesystem>
#include <cstdlib>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "coordinator/job_queue.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "sdfarm.grpc.pb.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/hostile_worker.h"
#include "tests/farm/sweep_check.h"
#include "tests/farm/tcp_proxy.h"
#include "worker/tools/cli_flags.h"

namespace sdfarm::chaos {
namespace {

namespace pb = ::sdfarm::v1;
using coordinator::JobQueue;
using nlohmann::json;
using testing::Farm;

constexpr char kProgram[] = "sdfarm-chaos";
constexpr char kModel[] = "tiny-sd";

struct Config {
  int64_t images = 300;
  int workers = 4;
  int step_ms = 250;
  int steps = 6;
  int job_size = 4;
  double lease = 4;
  double seconds_between_kills = 4;
  int sigstops = 2;
  int coordinator_restarts = 2;
  int redis_restarts = 1;
  int dishonest = 1;  // dishonest workers (forged reports for other workers' jobs)
  int second_coordinators = 1;
  int redis_rollbacks = 1;
  int disk_fulls = 0;
  int max_attempts = 10;
  int drop_replies_every = 0;
  double timeout = 0;  // 0: from the sweep's size
  uint64_t seed = 0;
  bool keep = false;
  bool require_late_report = true;
};

void Say(const std::string& line) {
  static const absl::Time start = absl::Now();
  std::fprintf(stderr, "%s: %7.1fs %s\n", kProgram, absl::ToDoubleSeconds(absl::Now() - start), line.c_str());
  std::fflush(stderr);
}

// The sweep: 4 prompts x 2 guidance scales x ceil(images / 8) seeds.
json SweepJson(const Config& c) {
  const int64_t seeds = std::max<int64_t>(1, (c.images + 7) / 8);
  return {{"name", "chaos"},
          {"model", kModel},
          {"prompts", {"a red fox in the snow", "a lighthouse at night", "a harbor at dusk, oil painting",
                       "an old forest in the fog"}},
          {"seeds", absl::StrCat("0-", seeds - 1)},
          {"guidance_scales", {4, 7.5}},
          {"steps", c.steps},
          {"samplers", {"euler_a"}},
          {"sizes", {"64x64"}}};
}

int64_t CountOf(const std::string& text, const std::string& needle) {
  int64_t n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + needle.size())) ++n;
  return n;
}

class ChaosRun {
 public:
  explicit ChaosRun(Config config) : c_(std::move(config)), rng_(c_.seed) {}

  int Run();

 private:
  absl::Status Setup();
  absl::Status Drive();
  json Check();

  // Chaos actions.
  absl::Status KillRandomWorker();
  absl::Status RestartCoordinator(bool crash);
  absl::Status RestartRedis();
  absl::Status FreezeAWorkerPastItsLease();
  // A dishonest worker claims a job, reports forged images and failures for
  // other in-flight jobs (under its own delivery and under theirs), then
  // vanishes holding its job. Every forged report must be refused.
  absl::Status ActDishonestly();
  absl::Status StartASecondCoordinator();
  absl::Status CopyRedisData();
  absl::Status RollRedisBack();
  // The output root becomes a tmpfs of its own (before the coordinator
  // starts again); FailedPrecondition when it cannot be mounted.
  absl::Status MountOutputTmpfs();
  // Fills the output root's tmpfs, holds it until the sweep's status says
  // images cannot be stored (and a few seconds more), then frees it.
  absl::Status FillTheDisk();

  RedisClient* redis();
  std::optional<pb::SweepStatus> Poll();
  int WorkerIndex(const std::string& worker_id) const;

  Config c_;
  std::mt19937_64 rng_;
  std::unique_ptr<Farm> farm_;
  std::unique_ptr<testing::TcpProxy> proxy_;
  std::unique_ptr<RedisClient> redis_;
  std::string sweep_id_;
  json spec_;
  pb::SweepStatus last_;
  absl::Time started_;
  std::vector<std::string> problems_;

  int worker_kills_ = 0, workers_started_ = 0, sigstops_ = 0, coordinator_restarts_ = 0, redis_restarts_ = 0;
  int freezes_with_late_report_ = 0;  // the frozen worker reported late and was refused
  int second_coordinators_refused_ = 0, redis_rollbacks_ = 0;
  std::vector<std::string> second_coordinator_problems_;
  std::vector<std::string> freeze_outcomes_;
  int dishonest_runs_ = 0, forged_reports_ = 0, forged_reports_refused_ = 0;
  bool output_tmpfs_ = false;
  int disk_fulls_ = 0, disk_fulls_reported_ = 0;
};

RedisClient* ChaosRun::redis() {
  if (!redis_) {
    auto r = RedisClient::Connect(farm_->redis()->client_options());
    if (r.ok()) redis_ = *std::move(r);
  }
  return redis_.get();
}

int ChaosRun::WorkerIndex(const std::string& worker_id) const {
  int i = -1;
  if (worker_id.size() < 2 || worker_id[0] != 'w' || !absl::SimpleAtoi(worker_id.substr(1), &i)) return -1;
  return i < farm_->num_workers() ? i : -1;
}

std::optional<pb::SweepStatus> ChaosRun::Poll() {
  auto s = farm_->Status(sweep_id_);
  if (!s.ok()) return std::nullopt;
  last_ = *s;
  return *s;
}

absl::Status ChaosRun::Setup() {
  if (c_.keep) setenv("SDFARM_KEEP_TEST_DIRS", "1", 1);
  testing::FarmOptions o;
  o.workers = 0;
  o.engine = absl::StrCat("synthetic:", c_.step_ms);
  o.lease_seconds = c_.lease;
  o.max_attempts = c_.max_attempts;
  o.job_size = c_.job_size;
  auto farm = Farm::Start(o);
  if (!farm.ok()) return farm.status();
  farm_ = *std::move(farm);
  if (c_.disk_fulls > 0) {
    if (auto s = farm_->StopCoordinator(); !s.ok()) return s;
    if (auto s = MountOutputTmpfs(); !s.ok()) return s;
    if (auto s = farm_->StartCoordinator(); !s.ok()) return s;
  }
  if (c_.drop_replies_every > 0) {
    auto proxy = testing::TcpProxy::Start(farm_->redis()->port());
    if (!proxy.ok()) return proxy.status();
    proxy_ = *std::move(proxy);
    farm_->set_coordinator_redis_url(proxy_->url());
    if (auto s = farm_->StopCoordinator(); !s.ok()) return s;
    if (auto s = farm_->StartCoordinator(); !s.ok()) return s;
    proxy_->DropEveryNthReply(c_.drop_replies_every);
  }
  for (int i = 0; i < c_.workers; ++i) {
    auto w = farm_->StartWorker();
    if (!w.ok()) return w.status();
    ++workers_started_;
  }
  spec_ = SweepJson(c_);
  // As a client does: sent again with the same request id while UNAVAILABLE.
  pb::SubmitRequest req;
  req.set_spec_json(spec_.dump());
  req.set_wait_for_workers(true);  // workers come and go here
  req.set_request_id(absl::StrCat("chaos-", c_.seed));
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (true) {
    pb::SubmitResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, farm_->client_token(), absl::Seconds(20));
    absl::Status s = FromGrpc(farm_->client()->Submit(&ctx, req, &resp));
    if (s.ok()) {
      sweep_id_ = resp.sweep_id();
      Say(absl::StrCat("sweep ", sweep_id_, ": ", resp.images(), " images in ", resp.jobs(), " jobs; farm in ",
                       farm_->dir()));
      return absl::OkStatus();
    }
    if (s.code() != absl::StatusCode::kUnavailable || absl::Now() > deadline) return s;
    absl::SleepFor(absl::Milliseconds(200));
  }
}

absl::Status ChaosRun::MountOutputTmpfs() {
  // Room for every image several times over; the filler takes the rest.
  const int64_t mib = 64 + c_.images / 16;
  const std::string root = farm_->output_root();
  if (::mount("tmpfs", root.c_str(), "tmpfs", 0, absl::StrCat("size=", mib, "m").c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--disk-fulls needs a tmpfs of its own over the output root ", root, ", and mount(2) failed: ",
        std::strerror(errno), " (run as root or with CAP_SYS_ADMIN, or pass --disk-fulls 0)"));
  }
  output_tmpfs_ = true;
  Say(absl::StrCat("output root ", root, " is a ", mib, " MiB tmpfs"));
  return absl::OkStatus();
}

absl::Status ChaosRun::FillTheDisk() {
  const std::string filler = farm_->output_root() + "/.chaos-filler";
  {
    std::ofstream out(filler, std::ios::binary);
    const std::string block(1 << 16, '\0');
    while (out.write(block.data(), static_cast<std::streamsize>(block.size())) && out.flush()) {
    }
  }
  std::error_code ec;
  const auto filled = std::filesystem::file_size(filler, ec);
  ++disk_fulls_;
  Say(absl::StrCat("disk full: ", ec ? 0 : filled >> 20, " MiB of filler on the output root"));
  // Held until the sweep says so (workers report images within a job's
  // time), then a few seconds more: several retries of the held jobs.
  const absl::Time deadline = absl::Now() + absl::Seconds(30 + c_.lease * 3);
  bool reported = false;
  while (!reported && absl::Now() < deadline) {
    if (auto st = Poll(); st) {
      for (const std::string& w : st->warnings()) reported = reported || absl::StrContains(w, "cannot store images");
    }
    if (!reported) absl::SleepFor(absl::Milliseconds(200));
  }
  if (reported) {
    ++disk_fulls_reported_;
    absl::SleepFor(absl::Seconds(6));
  } else {
    problems_.push_back("a full output disk was not reported in the sweep's status within 30 s");
  }
  std::filesystem::remove(filler, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot delete ", filler, ": ", ec.message()));
  Say(absl::StrCat("disk freed", reported ? " (the sweep's status had reported it)" : " (never reported!)"));
  return absl::OkStatus();
}

absl::Status ChaosRun::KillRandomWorker() {
  std::vector<int> running = farm_->RunningWorkers();
  if (running.empty()) return absl::OkStatus();
  const int victim = running[std::uniform_int_distribution<size_t>(0, running.size() - 1)(rng_)];
  if (auto s = farm_->KillWorker(victim); !s.ok()) return s;
  ++worker_kills_;
  auto w = farm_->StartWorker();
  if (!w.ok()) return w.status();
  ++workers_started_;
  Say(absl::StrCat("SIGKILL ", Farm::WorkerId(victim), "; started ", Farm::WorkerId(*w)));
  return absl::OkStatus();
}

absl::Status ChaosRun::RestartCoordinator(bool crash) {
  Say(absl::StrCat("coordinator: ", crash ? "SIGKILL" : "SIGTERM", " and start again"));
  if (auto s = crash ? farm_->KillCoordinator() : farm_->StopCoordinator(); !s.ok()) return s;
  absl::SleepFor(absl::Milliseconds(700));
  if (auto s = farm_->StartCoordinator(); !s.ok()) return s;
  ++coordinator_restarts_;
  return absl::OkStatus();
}

absl::Status ChaosRun::ActDishonestly() {
  const std::string name = absl::StrCat("mallory-", dishonest_runs_);
  testing::HostileWorker mallory(farm_->channel(), farm_->worker_token());
  pb::RegisterResponse reg;
  if (grpc::Status s = mallory.Register(name, kModel, "synthetic", &reg); !s.ok()) {
    Say(absl::StrCat(name, ": cannot register (", s.error_message(), "); skipped"));
    return absl::OkStatus();  // the coordinator may be restarting: not a finding
  }
  pb::ClaimResponse claimed;
  for (int i = 0; i < 5 && !claimed.has_job(); ++i) (void)mallory.Claim(&claimed, std::nullopt, 2000);
  if (!claimed.has_job()) {
    Say(absl::StrCat(name, ": got no job; skipped"));
    return absl::OkStatus();
  }
  ++dishonest_runs_;
  const pb::ClaimedJob held = claimed.job();
  auto spec = coordinator::SweepSpec::FromJson(spec_, coordinator::SweepLimits{}, 0);
  if (!spec.ok()) return spec.status();
  coordinator::SweepExpander expander(*spec, c_.job_size);
  RedisClient* r = redis();
  if (r == nullptr) return absl::UnavailableError("no Redis connection");
  auto inflight = r->Command({"HGETALL", "sdfarm:sweep:" + sweep_id_ + ":inflight"});
  if (!inflight.ok()) return inflight.status();
  int targets = 0;
  for (size_t i = 0; i + 1 < inflight->array().size() && targets < 3; i += 2) {
    const std::string target_stream = inflight->array()[i + 1].str();
    int64_t index = 0;
    if (!absl::SimpleAtoi(inflight->array()[i].str(), &index) || target_stream == held.stream_id()) continue;
    ++targets;
    const std::string job_id = absl::StrCat(sweep_id_, "/", index);
    const coordinator::JobSlice slice = expander.JobAt(index);
    std::vector<coordinator::Item> items;
    for (int64_t k = slice.first_item; k < slice.first_item + slice.count; ++k) items.push_back(expander.ItemAt(k));
    for (const std::string& stream : {held.stream_id(), target_stream}) {
      for (const pb::JobReport& last : {testing::ForgedDone(), testing::ForgedFailure()}) {
        pb::ReportAck ack;
        const grpc::Status s = mallory.Report(
            testing::ForgedReport(stream, job_id, "", last.has_done() ? items : std::vector<coordinator::Item>{},
                                  kModel, last),
            &ack);
        ++forged_reports_;
        if (s.ok() && ack.accepted()) {
          problems_.push_back(absl::StrCat(name, ": a forged ", last.has_done() ? "report" : "failure", " for job ",
                                           job_id, " under delivery ", stream, " was accepted"));
        } else if (s.error_code() == grpc::StatusCode::PERMISSION_DENIED || (s.ok() && !ack.accepted())) {
          ++forged_reports_refused_;
        }
      }
    }
  }
  Say(absl::StrCat(name, ": holds ", held.job_id(), "; forged reports and failures for ", targets,
                   " other jobs; it vanishes now (its job comes back after the lease)"));
  return absl::OkStatus();
}

// A second coordinator on the same root (refused at once: the lock), then on
// another root with the same Redis (refused after waiting for the lease).
absl::Status ChaosRun::StartASecondCoordinator() {
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_CLIENT_TOKEN", farm_->client_token()},
                                                                {"SDFARM_WORKER_TOKEN", farm_->worker_token()}};
  int refused = 0;
  for (const std::string& root : {farm_->output_root(), farm_->dir() + "/second-root"}) {
    Say(absl::StrCat("a second coordinator on ", root == farm_->output_root() ? "the same root" : "another root",
                     " (must be refused)"));
    testing::RunResult r = testing::RunProgram(
        {SDFARM_COORDINATOR_BIN, "--listen", "127.0.0.1:0", "--redis-url", farm_->redis()->url(), "--output-root",
         root, "--leader-lease", "3"},
        env, absl::Seconds(60));
    const bool ok = r.exit_code == 1 && absl::StrContains(r.output, "another coordinator");
    if (ok) {
      ++refused;
    } else {
      second_coordinator_problems_.push_back(absl::StrCat("a second coordinator on ", root, " exited with ",
                                                          r.exit_code, ": ", r.output.substr(0, 400)));
    }
  }
  if (refused == 2) ++second_coordinators_refused_;
  return absl::OkStatus();
}

absl::Status ChaosRun::CopyRedisData() {
  const std::string copy = farm_->dir() + "/redis-copy";
  std::error_code ec;
  std::filesystem::remove_all(copy, ec);
  std::filesystem::copy(farm_->redis()->data_dir(), copy, std::filesystem::copy_options::recursive, ec);
  if (ec) return absl::InternalError("cannot copy Redis's data: " + ec.message());
  Say("copied Redis's data folder (for a rollback later)");
  return absl::OkStatus();
}

absl::Status ChaosRun::RollRedisBack() {
  Say("redis-server: SIGKILL and start again from the older copy of its data (a rollback)");
  const std::string copy = farm_->dir() + "/redis-copy";
  if (auto s = farm_->redis()->Kill(); !s.ok()) return s;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(farm_->redis()->data_dir(), ec)) {
    std::filesystem::remove_all(e.path(), ec);
  }
  std::filesystem::copy(copy, farm_->redis()->data_dir(),
                        std::filesystem::copy_options::recursive | std::filesystem::copy_options::overwrite_existing,
                        ec);
  if (ec) return absl::InternalError("cannot restore Redis's data: " + ec.message());
  redis_.reset();
  if (auto s = farm_->redis()->Restart(); !s.ok()) return s;
  ++redis_rollbacks_;
  return absl::OkStatus();
}

absl::Status ChaosRun::RestartRedis() {
  Say("redis-server: SIGKILL and start again (AOF, appendfsync always)");
  if (auto s = farm_->RestartRedis(/*crash=*/true); !s.ok()) return s;
  ++redis_restarts_;
  return absl::OkStatus();
}

// Freezes a worker past the middle of a job, waits until another worker has
// taken the job over (lease expired, XAUTOCLAIM), then thaws it while Redis
// holds writes for a moment: its lease renewal cannot run, so it learns about
// the loss only from the coordinator, when it reports. The report must be
// refused and nothing of it written.
absl::Status ChaosRun::FreezeAWorkerPastItsLease() {
  RedisClient* r = redis();
  if (r == nullptr) return absl::UnavailableError("no Redis connection");
  const std::string stream = absl::StrCat("sdfarm:jobs:", kModel);
  int victim = -1;
  std::string job_id, stream_id;
  const absl::Time find_deadline = absl::Now() + absl::Seconds(30);
  while (victim < 0 && absl::Now() < find_deadline) {
    auto workers = farm_->Workers();
    if (workers.ok()) {
      for (const auto& w : workers->workers()) {
        const auto& step = w.last_step();
        if (w.current_job_id().empty() || step.total_steps() <= 0) continue;
        if (2 * step.step() < step.total_steps() || step.step() >= step.total_steps()) continue;
        const int index = WorkerIndex(w.worker_id());
        if (index < 0 || !farm_->worker(index)->running()) continue;
        // Its delivery of that job, from the pending list.
        auto pending = r->Command({"XPENDING", stream, JobQueue::kGroup, "-", "+", "20", w.worker_id()});
        if (!pending.ok()) continue;
        for (const RedisReply& p : pending->array()) {
          if (p.array().size() != 4) continue;
          auto entry = r->Command({"XRANGE", stream, p.array()[0].str(), p.array()[0].str()});
          if (entry.ok() && absl::StrContains(entry->DebugString(), w.current_job_id())) {
            stream_id = p.array()[0].str();
          }
        }
        if (stream_id.empty()) continue;
        victim = index;
        job_id = w.current_job_id();
        break;
      }
    }
    if (victim < 0) absl::SleepFor(absl::Milliseconds(30));
  }
  if (victim < 0) {
    freeze_outcomes_.push_back("no worker was found in the middle of a job");
    return absl::OkStatus();
  }
  const std::string log_before = farm_->WorkerLog(victim);
  if (auto s = farm_->StopWorker(victim); !s.ok()) return s;
  const absl::Time frozen_at = absl::Now();
  ++sigstops_;
  const std::string name = Farm::WorkerId(victim);
  Say(absl::StrCat("SIGSTOP ", name, " in the middle of job ", job_id));

  // Until another worker owns the delivery (or it is gone: acked from a report
  // already in flight when the worker froze).
  std::string new_owner;
  const absl::Time deadline = absl::Now() + absl::Seconds(4 * c_.lease + 30);
  while (absl::Now() < deadline) {
    auto p = r->Command({"XPENDING", stream, JobQueue::kGroup, stream_id, stream_id, "1"});
    if (p.ok()) {
      if (p->array().empty()) {
        new_owner = "(finished)";
        break;
      }
      const std::string owner = p->array()[0].array().size() == 4 ? p->array()[0].array()[1].str() : "";
      if (!owner.empty() && owner != name) {
        new_owner = owner;
        break;
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  const absl::Duration pause = absl::Milliseconds(std::min<int64_t>(1500, static_cast<int64_t>(c_.lease * 400)));
  const bool paused =
      r->Command({"CLIENT", "PAUSE", absl::StrCat(absl::ToInt64Milliseconds(pause)), "WRITE"}).ok();
  if (auto s = farm_->ContinueWorker(victim); !s.ok()) return s;
  Say(absl::StrCat("SIGCONT ", name, " after ", absl::FormatDuration(absl::Trunc(absl::Now() - frozen_at, absl::Milliseconds(100))),
                   " (job ", job_id, " now held by ", new_owner.empty() ? "nobody yet" : new_owner,
                   paused ? "; Redis writes paused for " : "", paused ? absl::FormatDuration(pause) : "", ")"));
  absl::SleepFor(pause + absl::Milliseconds(100));
  (void)r->Command({"CLIENT", "UNPAUSE"});

  // What the thawed worker did with the job.
  const std::string refused = absl::StrCat("job ", job_id, ": the coordinator discarded the report");
  const std::string stopped = absl::StrCat("job ", job_id, " stopped after");
  std::string outcome = "no outcome logged";
  const absl::Time log_deadline = absl::Now() + absl::Seconds(c_.lease + 5);
  while (absl::Now() < log_deadline) {
    const std::string log = farm_->WorkerLog(victim);
    const std::string fresh = log.size() > log_before.size() ? log.substr(log_before.size()) : "";
    if (absl::StrContains(fresh, refused)) {
      outcome = "reported late; the report was refused";
      ++freezes_with_late_report_;
      break;
    }
    if (absl::StrContains(fresh, stopped)) {
      outcome = "learned of the lost lease before reporting; sent nothing";
      break;
    }
    if (absl::StrContains(fresh, absl::StrCat("job ", job_id, " done"))) {
      outcome = "its report was ACCEPTED";
      problems_.push_back(absl::StrCat("the late report of job ", job_id, " by ", name, " was accepted"));
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  freeze_outcomes_.push_back(absl::StrCat(name, " job ", job_id, " (taken over by ",
                                          new_owner.empty() ? "nobody" : new_owner, "): ", outcome));
  Say(absl::StrCat(name, ": ", outcome));
  return absl::OkStatus();
}

absl::Status ChaosRun::Drive() {
  struct Event {
    double at;  // fraction of the sweep done
    std::string what;
  };
  std::vector<Event> events;
  for (int i = 0; i < c_.sigstops; ++i) events.push_back({0.08 + 0.72 * (i + 0.5) / c_.sigstops, "sigstop"});
  for (int i = 0; i < c_.coordinator_restarts; ++i) {
    events.push_back({0.25 + 0.45 * i / std::max(1, c_.coordinator_restarts - 1), i % 2 == 0 ? "kill-coordinator"
                                                                                               : "stop-coordinator"});
  }
  for (int i = 0; i < c_.redis_restarts; ++i) events.push_back({0.4 + 0.4 * i / std::max(1, c_.redis_restarts), "redis"});
  for (int i = 0; i < c_.dishonest; ++i) events.push_back({0.15 + 0.6 * (i + 0.5) / c_.dishonest, "dishonest"});
  for (int i = 0; i < c_.second_coordinators; ++i) {
    events.push_back({0.15 + 0.6 * i / std::max(1, c_.second_coordinators), "second-coordinator"});
  }
  // Copied after the first coordinator restart (25 %), rolled back to
  // before the second (70 %): the copy holds the running coordinator's lease.
  for (int i = 0; i < c_.redis_rollbacks; ++i) {
    const double from = 0.3 + 0.3 * i / std::max(1, c_.redis_rollbacks);
    events.push_back({from, "copy-redis"});
    events.push_back({from + 0.25 / std::max(1, c_.redis_rollbacks), "rollback-redis"});
  }
  for (int i = 0; i < c_.disk_fulls; ++i) events.push_back({0.2 + 0.6 * (i + 0.5) / c_.disk_fulls, "disk-full"});
  std::stable_sort(events.begin(), events.end(), [](const Event& a, const Event& b) { return a.at < b.at; });
  size_t next_event = 0;

  const double timeout = c_.timeout > 0 ? c_.timeout : 180 + 0.6 * static_cast<double>(c_.images);
  const absl::Time deadline = started_ + absl::Seconds(timeout);
  absl::Time next_kill = absl::Now() + absl::Seconds(c_.seconds_between_kills);
  absl::Time next_report = absl::Now();
  while (true) {
    std::optional<pb::SweepStatus> st = Poll();
    if (st && st->state() == pb::DONE) return absl::OkStatus();
    if (st && st->state() != pb::RUNNING) {
      return absl::InternalError(absl::StrCat("the sweep is ", pb::SweepState_Name(st->state())));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("the sweep did not finish within ", timeout, " s; last status: ",
                                                      last_.ShortDebugString()));
    }
    if (absl::Now() >= next_report) {
      Say(absl::StrCat("progress ", last_.done(), "/", last_.total(), " images, ", last_.jobs_done(), "/",
                       last_.jobs(), " jobs"));
      next_report = absl::Now() + absl::Seconds(10);
    }
    const double done = last_.total() > 0 ? static_cast<double>(last_.done()) / last_.total() : 0;
    if (next_event < events.size() && done >= events[next_event].at) {
      const std::string what = events[next_event++].what;
      absl::Status s;
      if (what == "sigstop") s = FreezeAWorkerPastItsLease();
      if (what == "kill-coordinator") s = RestartCoordinator(true);
      if (what == "stop-coordinator") s = RestartCoordinator(false);
      if (what == "redis") s = RestartRedis();
      if (what == "dishonest") s = ActDishonestly();
      if (what == "second-coordinator") s = StartASecondCoordinator();
      if (what == "copy-redis") s = CopyRedisData();
      if (what == "rollback-redis") s = RollRedisBack();
      if (what == "disk-full") s = FillTheDisk();
      if (!s.ok()) return s;
      continue;
    }
    if (c_.seconds_between_kills > 0 && absl::Now() >= next_kill) {
      if (auto s = KillRandomWorker(); !s.ok()) return s;
      next_kill = absl::Now() + absl::Seconds(c_.seconds_between_kills);
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

json ChaosRun::Check() {
  json out;
  // The coordinator's view.
  auto st = Poll();
  out["sweep_state"] = st ? pb::SweepState_Name(st->state()) : "unknown";
  out["sweep_done"] = last_.done();
  out["sweep_failed"] = last_.failed();
  out["jobs"] = last_.jobs();
  out["jobs_done"] = last_.jobs_done();

  // Stop the workers cleanly first: nothing is written after this.
  int unclean_exits = 0;
  for (int i : farm_->RunningWorkers()) {
    const int code = farm_->worker(i)->Stop(absl::Seconds(15));
    if (code != 0) {
      ++unclean_exits;
      problems_.push_back(absl::StrCat(Farm::WorkerId(i), " exited with ", code, " on SIGTERM"));
    }
  }
  out["workers_unclean_exits"] = unclean_exits;

  // The folder.
  auto spec = coordinator::SweepSpec::FromJson(spec_, coordinator::SweepLimits{}, 0);
  testing::SweepFolderCheck f;
  if (spec.ok()) {
    coordinator::SweepExpander expander(*spec, c_.job_size);
    f = testing::CheckSweepFolder(farm_->output_root() + "/chaos", expander, kModel);
  } else {
    problems_.push_back(spec.status().ToString());
  }
  out["images_expected"] = f.expected;
  out["images_found"] = f.images_found;
  out["manifest_rows"] = f.manifest_rows;
  out["duplicate_rows"] = f.duplicate_rows;
  out["unreadable_rows"] = f.unreadable_rows;
  out["missing"] = f.missing;
  out["unexpected"] = f.unexpected;
  out["invalid_pngs"] = f.invalid_pngs;
  out["parameter_mismatches"] = f.parameter_mismatches;
  out["leftover_temp_files"] = f.leftover_files;
  for (const std::string& p : f.problems) problems_.push_back(p);

  // Redis: every job done once; nothing queued, pending, in flight or dead.
  const std::string stream = absl::StrCat("sdfarm:jobs:", kModel);
  auto num = [&](const std::vector<std::string>& argv) -> int64_t {
    RedisClient* r = redis();
    if (r == nullptr) return -1;
    auto reply = r->Command(argv);
    if (!reply.ok()) return -1;
    if (reply->is_array()) return reply->array().empty() ? -1 : reply->array()[0].AsInt().value_or(-1);
    if (reply->is_nil()) return 0;
    return reply->AsInt().value_or(-1);
  };
  out["redis_jobs_done"] = num({"HGET", "sdfarm:sweep:" + sweep_id_, "jobs_done"});
  out["queued_left"] = num({"XLEN", stream});
  out["pending_left"] = num({"XPENDING", stream, JobQueue::kGroup});
  out["inflight_left"] = num({"HLEN", "sdfarm:sweep:" + sweep_id_ + ":inflight"});
  out["dead_letters"] = num({"XLEN", absl::StrCat("sdfarm:dead:", kModel)});
  out["sweeps_in_redis"] = num({"ZCARD", "sdfarm:sweeps"});

  // The chaos, and what it caused.
  out["workers"] = c_.workers;
  out["worker_kills"] = worker_kills_;
  out["workers_started"] = workers_started_;
  out["sigstops"] = sigstops_;
  out["sigstops_with_late_report_refused"] = freezes_with_late_report_;
  out["sigstop_outcomes"] = freeze_outcomes_;
  out["coordinator_restarts"] = coordinator_restarts_;
  out["redis_restarts"] = redis_restarts_;
  out["dishonest_workers"] = dishonest_runs_;
  out["forged_reports"] = forged_reports_;
  out["forged_reports_refused"] = forged_reports_refused_;
  out["second_coordinators_refused"] = second_coordinators_refused_;
  out["redis_rollbacks"] = redis_rollbacks_;
  out["disk_fulls"] = disk_fulls_;
  out["disk_fulls_reported"] = disk_fulls_reported_;
  out["storage_holds"] = CountOf(farm_->CoordinatorLog(), "cannot store images");
  out["sweep_recoveries"] = last_.recoveries();
  out["rollbacks_reported"] = CountOf(farm_->CoordinatorLog(), "Redis's state went back");
  if (proxy_) out["coordinator_redis_replies_dropped"] = proxy_->replies_dropped();

  const std::string coordinator_log = farm_->CoordinatorLog();
  out["discarded_late_results"] = CountOf(coordinator_log, "its results were discarded");
  out["requeued_lost_jobs"] = CountOf(coordinator_log, "enqueued it again");
  int64_t refused_reports = 0, deliveries = 0, redeliveries = 0, max_delivery = 0;
  std::map<std::string, int64_t> claims;
  const std::regex claimed(R"(claimed job (\S+) \(.*delivery (\d+)\))");
  for (int i = 0; i < farm_->num_workers(); ++i) {
    const std::string log = farm_->WorkerLog(i);
    refused_reports += CountOf(log, "the coordinator discarded the report");
    std::istringstream lines(log);
    std::string line;
    while (std::getline(lines, line)) {
      std::smatch m;
      if (!std::regex_search(line, m, claimed)) continue;
      int64_t d = 0;
      (void)absl::SimpleAtoi(m[2].str(), &d);
      ++deliveries;
      ++claims[m[1].str()];
      if (d > 1) ++redeliveries;
      max_delivery = std::max(max_delivery, d);
    }
  }
  int64_t jobs_claimed_more_than_once = 0;
  for (const auto& [job, n] : claims) jobs_claimed_more_than_once += n > 1;
  out["deliveries"] = deliveries;
  out["redeliveries"] = redeliveries;
  out["jobs_delivered_more_than_once"] = jobs_claimed_more_than_once;
  out["max_delivery_count"] = max_delivery;
  out["late_reports_refused"] = refused_reports;  // ReportAck.accepted = false, as the workers saw it
  out["wall_seconds"] = std::round(absl::ToDoubleSeconds(absl::Now() - started_) * 10) / 10;
  if (c_.keep) out["farm_dir"] = farm_->dir();

  // Verdict.
  const int64_t expected = f.expected;
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) problems_.push_back(what);
  };
  require(f.ok(), "the output folder is not exactly the expected images");
  require(out["sweep_state"] == "DONE", "the sweep is not DONE");
  require(last_.done() == expected, "the coordinator counts another number of images");
  require(last_.failed() == 0, "images failed");
  int64_t forged_rows = 0;
  for (const json& row : testing::ReadManifest(farm_->output_root() + "/chaos")) {
    forged_rows += row.contains("parameters") && absl::StrContains(row["parameters"].dump(), "forged prompt");
  }
  out["forged_rows_kept"] = forged_rows;
  require(forged_rows == 0, "a forged image was kept");
  if (c_.dishonest > 0) {
    require(dishonest_runs_ >= 1 && forged_reports_refused_ >= 1, "no dishonest worker got to forge a report");
  }
  require(last_.jobs_done() == last_.jobs(), "not every job is done");
  require(out["redis_jobs_done"] == last_.jobs(), "Redis counts another number of jobs done");
  require(out["queued_left"] == 0 && out["pending_left"] == 0 && out["inflight_left"] == 0,
          "jobs are left in Redis");
  require(out["dead_letters"] == 0, "jobs were dead-lettered");
  require(out["sweeps_in_redis"] == 1, "more than one sweep in Redis");
  require(coordinator_restarts_ == c_.coordinator_restarts, "not every coordinator restart happened (sweep too fast?)");
  require(redis_restarts_ == c_.redis_restarts, "not every Redis restart happened (sweep too fast?)");
  require(sigstops_ == c_.sigstops, "not every SIGSTOP happened (sweep too fast?)");
  for (const std::string& p : second_coordinator_problems_) require(false, p);
  require(second_coordinators_refused_ == c_.second_coordinators, "a second coordinator was not refused");
  require(redis_rollbacks_ == c_.redis_rollbacks, "not every Redis rollback happened (sweep too fast?)");
  require(last_.recoveries() >= c_.redis_rollbacks, "a Redis rollback was not reported in the sweep's status");
  require(disk_fulls_ == c_.disk_fulls, "not every full disk happened (sweep too fast?)");
  require(disk_fulls_reported_ == disk_fulls_, "a full disk was not reported in the sweep's status");
  if (c_.require_late_report && c_.sigstops > 0) {
    require(freezes_with_late_report_ >= 1 && out["discarded_late_results"].get<int64_t>() >= 1,
            "no frozen worker's late report was refused");
  }
  out["problems"] = problems_;
  out["ok"] = problems_.empty();
  return out;
}

int ChaosRun::Run() {
  started_ = absl::Now();
  json summary;
  if (absl::Status s = Setup(); !s.ok()) {
    summary = {{"ok", false}, {"problems", {absl::StrCat("cannot start the farm: ", s.ToString())}}};
    std::cout << summary.dump(2) << std::endl;
    if (output_tmpfs_) {
      farm_->StopCoordinator().IgnoreError();
      ::umount2(farm_->output_root().c_str(), MNT_DETACH);
    }
    return 1;
  }
  absl::Status driven = Drive();
  if (!driven.ok()) {
    problems_.push_back(absl::StrCat("the run broke off: ", driven.ToString()));
    Say(problems_.back());
  }
  summary = Check();
  if (!summary["ok"].get<bool>()) {
    std::cerr << "---- the farm's logs (tails) ----\n" << farm_->Logs() << "\n";
  }
  if (output_tmpfs_) {
    if (c_.keep) {
      summary["output_root_tmpfs"] = farm_->output_root() + " (still mounted: umount it when done)";
    } else {
      farm_->StopCoordinator().IgnoreError();
      ::umount2(farm_->output_root().c_str(), MNT_DETACH);
    }
  }
  std::cout << summary.dump(2) << std::endl;
  return summary["ok"].get<bool>() ? 0 : 1;
}

int Main(int argc, char** argv) {
  tools::CliFlags flags(kProgram,
                        "Renders one sweep on a local farm (redis-server, sdfarm-coordinator, sdfarm-worker "
                        "--engine synthetic) while killing, freezing and restarting its parts; then checks that "
                        "every image exists exactly once and is right, and prints a JSON summary.");
  flags.Add("images", "N", "images in the sweep (rounded up to a multiple of 8)", "300");
  flags.Add("workers", "N", "workers running at any time", "4");
  flags.Add("step-ms", "MS", "synthetic engine: milliseconds per denoising step", "250");
  flags.Add("steps", "N", "denoising steps per image", "6");
  flags.Add("job-size", "N", "images per job", "4");
  flags.Add("lease", "SECONDS", "the coordinator's lease", "4");
  flags.Add("seconds-between-kills", "S", "SIGKILL a random worker (and start a new one) this often; 0: never", "4");
  flags.Add("sigstops", "N", "freeze a worker mid-job past its lease this many times", "2");
  flags.Add("coordinator-restarts", "N", "restart the coordinator this many times (SIGKILL, SIGTERM, ...)", "2");
  flags.Add("redis-restarts", "N", "restart redis-server (SIGKILL) this many times", "1");
  flags.Add("dishonest", "N", "this many dishonest workers forge reports and failures for other workers' jobs", "1");
  flags.Add("second-coordinators", "N",
            "start a second coordinator (same root, then another root on the same Redis) this many times; each must "
            "be refused",
            "1");
  flags.Add("redis-rollbacks", "N",
            "copy Redis's data folder and, later, restart redis-server from the copy (a rollback) this many times",
            "1");
  flags.Add("disk-fulls", "N",
            "fill the output disk (a tmpfs of its own over the output root: needs root or CAP_SYS_ADMIN) mid-run "
            "this many times, until the sweep reports it, then free it",
            "0");
  flags.Add("max-attempts", "N", "the coordinator's --max-attempts (deliveries before a job is given up)", "10");
  flags.Add("drop-coordinator-redis-replies", "N",
            "lose every N-th Redis reply to the coordinator after the command ran (0: none)", "0");
  flags.Add("timeout", "SECONDS", "give up after this long (default: 180 + 0.6 per image)", "0");
  flags.Add("seed", "N", "random seed for the choice of victims (default: from the clock)");
  flags.AddBool("keep", "keep the farm's folder (logs, Redis data, images) and print its path");
  flags.AddBool("require-late-report",
                "fail unless at least one frozen worker's late report was refused (default on; --no-require-late-report)");
  if (auto s = flags.Parse(argc, argv); !s.ok()) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", kProgram, s.message().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }
  Config c;
  auto i64 = [&](const char* name, int64_t lo, int64_t hi, auto* out) -> bool {
    auto v = flags.GetInt(name, lo, hi);
    if (!v.ok()) {
      std::fprintf(stderr, "%s: error: %s (see --help)\n", kProgram, v.status().message().c_str());
      return false;
    }
    *out = static_cast<std::remove_pointer_t<decltype(out)>>(*v);
    return true;
  };
  auto dbl = [&](const char* name, double lo, double hi, double* out) -> bool {
    auto v = flags.GetDouble(name, lo, hi);
    if (!v.ok()) {
      std::fprintf(stderr, "%s: error: %s (see --help)\n", kProgram, v.status().message().c_str());
      return false;
    }
    *out = *v;
    return true;
  };
  if (!i64("images", 1, 1000000, &c.images) || !i64("workers", 1, 64, &c.workers) ||
      !i64("step-ms", 0, 10000, &c.step_ms) || !i64("steps", 1, 100, &c.steps) ||
      !i64("job-size", 1, 256, &c.job_size) || !i64("sigstops", 0, 100, &c.sigstops) ||
      !i64("coordinator-restarts", 0, 100, &c.coordinator_restarts) ||
      !i64("redis-restarts", 0, 100, &c.redis_restarts) || !i64("dishonest", 0, 100, &c.dishonest) || !i64("max-attempts", 1, 1000, &c.max_attempts) ||
      !i64("second-coordinators", 0, 100, &c.second_coordinators) ||
      !i64("redis-rollbacks", 0, 100, &c.redis_rollbacks) || !i64("disk-fulls", 0, 100, &c.disk_fulls) ||
      !i64("drop-coordinator-redis-replies", 0, 1000000, &c.drop_replies_every) ||
      !dbl("lease", 1, 3600, &c.lease) || !dbl("seconds-between-kills", 0, 3600, &c.seconds_between_kills) ||
      !dbl("timeout", 0, 86400, &c.timeout)) {
    return 2;
  }
  if (flags.Has("seed")) {
    if (!i64("seed", 0, INT64_MAX, &c.seed)) return 2;
  } else {
    c.seed = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  }
  c.keep = flags.GetBool("keep");
  c.require_late_report = !flags.Has("require-late-report") || flags.GetBool("require-late-report");
  if (c.sigstops > 0 && c.workers < 2) {
    std::fprintf(stderr, "%s: error: --sigstops needs at least 2 workers (see --help)\n", kProgram);
    return 2;
  }
  Say(absl::StrCat("seed ", c.seed));
  signal(SIGPIPE, SIG_IGN);
  ChaosRun run(c);
  return run.Run();
}

}  // namespace
}  // namespace sdfarm::chaos

int main(int argc, char** argv) { return sdfarm::chaos::Main(argc, argv); }
