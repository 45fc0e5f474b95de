// Redis semantics the farm relies on (issue 1, part 2): a trimmed job stream
// never drops a job; a connection broken mid-call repeats no side effect (the
// client never retries, and the coordinator's scripts are idempotent); the
// same request id makes one sweep; an evicting Redis is warned about.
#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "coordinator/job_queue.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "sdfarm.grpc.pb.h"
#include "tests/common/redis_server_fixture.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/sweep_check.h"
#include "tests/farm/tcp_proxy.h"

namespace sdfarm::testing {
namespace {

namespace pb = ::sdfarm::v1;
using coordinator::JobQueue;
using nlohmann::json;

constexpr char kStream[] = "sdfarm:jobs:tiny-sd";

int64_t Int(RedisClient& r, const std::vector<std::string>& argv) {
  auto reply = r.Command(argv);
  if (!reply.ok()) return -1;
  return reply->AsInt().value_or(-1);
}

// Jobs delivered and not acked, from the XPENDING summary.
int64_t PendingCount(RedisClient& r, const std::string& stream) {
  auto reply = r.Command({"XPENDING", stream, JobQueue::kGroup});
  if (!reply.ok() || reply->array().empty()) return -1;
  return reply->array()[0].AsInt().value_or(-1);
}

// Polls `cond` every 20 ms until it holds or `timeout` passes.
template <typename F>
bool WaitFor(F cond, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return cond();
}

json SmallSpec(const std::string& name, int seeds, int steps) {
  return {{"name", name},
          {"model", "tiny-sd"},
          {"prompts", {"a lighthouse in the fog"}},
          {"seeds", absl::StrCat("0-", seeds - 1)},
          {"guidance_scales", {7.5}},
          {"steps", steps},
          {"samplers", {"euler_a"}},
          {"sizes", {"64x64"}}};
}

SweepFolderCheck CheckFolder(Farm& farm, const json& spec, int job_size) {
  auto parsed = coordinator::SweepSpec::FromJson(spec, coordinator::SweepLimits{}, 0);
  if (!parsed.ok()) {
    SweepFolderCheck c;
    c.problems.push_back(parsed.status().ToString());
    return c;
  }
  coordinator::SweepExpander expander(*parsed, job_size);
  return CheckSweepFolder(farm.output_root() + "/" + spec["name"].get<std::string>(), expander, "tiny-sd");
}

// Submits as a client does: sent again, with the same request id, while the
// coordinator is UNAVAILABLE (restarting, or its Redis call failed).
absl::StatusOr<std::string> SubmitWithRequestId(Farm& farm, const json& spec, const std::string& request_id) {
  pb::SubmitRequest req;
  req.set_spec_json(spec.dump());
  req.set_wait_for_workers(true);
  req.set_request_id(request_id);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (true) {
    pb::SubmitResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, farm.client_token(), absl::Seconds(20));
    absl::Status s = FromGrpc(farm.client()->Submit(&ctx, req, &resp));
    if (s.ok()) return resp.sweep_id();
    if (s.code() != absl::StatusCode::kUnavailable || absl::Now() > deadline) return s;
    absl::SleepFor(absl::Milliseconds(100));
  }
}

// (a) XTRIM deletes stream entries whether or not they are pending: the jobs
// waiting in the stream vanish, and a pending one keeps only its id in the
// group's pending list. The coordinator must notice that jobs it holds in
// flight have no stream entry any more and enqueue them again.
TEST(RedisSemanticsTest, ATrimmedJobStreamDropsNoJob) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:100", .lease_seconds = 3,
                                                     .job_size = 2}));
  const json spec = SmallSpec("trimmed", 20, 10);  // 10 jobs of 2 images, ~1 s each
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(auto redis, RedisClient::Connect(farm->redis()->client_options()));
  ASSERT_TRUE(WaitFor([&] { return Int(*redis, {"XLEN", kStream}) >= 2; }, absl::Seconds(20))) << farm->Logs();

  // One worker takes a job; then the stream is trimmed to nothing under it.
  FARM_ASSERT_OK_AND_ASSIGN(int w0, farm->StartWorker());
  (void)w0;
  ASSERT_TRUE(WaitFor([&] { return PendingCount(*redis, kStream) >= 1; }, absl::Seconds(30))) << farm->Logs();
  const int64_t trimmed = Int(*redis, {"XTRIM", kStream, "MAXLEN", "0"});
  EXPECT_GE(trimmed, 2);
  EXPECT_EQ(Int(*redis, {"XLEN", kStream}), 0);
  EXPECT_GE(PendingCount(*redis, kStream), 1);  // the pending list keeps the deleted job's id

  // Once more later, with other jobs waiting and in flight.
  FARM_ASSERT_OK_AND_ASSIGN(int w1, farm->StartWorker());
  (void)w1;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto st = farm->Status(id);
        return st.ok() && st->done() >= 6;
      },
      absl::Seconds(60)))
      << farm->Logs();
  EXPECT_GE(Int(*redis, {"XTRIM", kStream, "MAXLEN", "0"}), 0);

  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Seconds(90)));
  EXPECT_EQ(st.done(), 20) << farm->Logs();
  EXPECT_EQ(st.failed(), 0);
  EXPECT_EQ(st.jobs_done(), 10);
  const SweepFolderCheck check = CheckFolder(*farm, spec, 2);
  EXPECT_TRUE(check.ok()) << check.Summary();
  EXPECT_EQ(Int(*redis, {"XLEN", "sdfarm:dead:tiny-sd"}), 0);
  EXPECT_EQ(Int(*redis, {"HLEN", "sdfarm:sweep:" + id + ":inflight"}), 0);
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "enqueued it again")) << farm->CoordinatorLog();
}

// (b) A connection that breaks after the server ran a command, before its
// reply arrived: the call fails and is not sent again, so the effect happened
// exactly once; the next call reconnects. A connection killed before the
// command ran (CLIENT KILL while the server holds it) leaves no effect.
TEST(RedisSemanticsTest, ABrokenConnectionRepeatsNoSideEffect) {
  FARM_ASSERT_OK_AND_ASSIGN(auto server, RedisServer::Start());
  FARM_ASSERT_OK_AND_ASSIGN(auto proxy, TcpProxy::Start(server->port()));
  RedisOptions via = server->client_options();
  via.port = proxy->port();
  FARM_ASSERT_OK_AND_ASSIGN(auto admin, RedisClient::Connect(server->client_options()));
  FARM_ASSERT_OK_AND_ASSIGN(auto client, RedisClient::Connect(via));
  JobQueue direct(admin.get());
  JobQueue q(client.get());
  ASSERT_TRUE(direct.EnsureGroup("m").ok());
  const std::string stream = direct.StreamKey("m");

  // The reply to XADD is lost.
  proxy->DropNextReply();
  auto lost = q.Enqueue("m", "s/0", "{}");
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kUnavailable) << lost.status();
  EXPECT_EQ(proxy->replies_dropped(), 1);
  EXPECT_EQ(Int(*admin, {"XLEN", stream}), 1);  // it ran, once
  ASSERT_TRUE(q.Enqueue("m", "s/1", "{}").ok());  // reconnects
  EXPECT_EQ(Int(*admin, {"XLEN", stream}), 2);

  // The reply to an ack is lost: acked once; asking again finds nothing to ack.
  FARM_ASSERT_OK_AND_ASSIGN(auto job, direct.Claim("m", "w", absl::ZeroDuration()));
  ASSERT_TRUE(job.has_value());
  EXPECT_EQ(job->job_id, "s/0");
  proxy->DropNextReply();
  auto acked = q.AckIfOwner("m", "w", job->stream_id);
  EXPECT_EQ(acked.status().code(), absl::StatusCode::kUnavailable) << acked.status();
  EXPECT_EQ(PendingCount(*admin, stream), 0);
  EXPECT_EQ(Int(*admin, {"XLEN", stream}), 1);
  FARM_ASSERT_OK_AND_ASSIGN(bool again, q.AckIfOwner("m", "w", job->stream_id));
  EXPECT_FALSE(again);

  // The reply to a counter script (the coordinator's jobs_done pattern) is lost.
  proxy->DropNextReply();
  EXPECT_FALSE(client->Command({"INCR", "n"}).ok());
  EXPECT_EQ(Int(*admin, {"GET", "n"}), 1);

  // CLIENT KILL between two calls: the next call finds the connection closed,
  // reconnects before sending, and runs once.
  FARM_ASSERT_OK_AND_ASSIGN(RedisReply cid, client->Command({"CLIENT", "ID"}));
  const int connects = client->connects();
  ASSERT_TRUE(admin->Command({"CLIENT", "KILL", "ID", absl::StrCat(cid.AsInt().value_or(0))}).ok());
  absl::SleepFor(absl::Milliseconds(100));  // the proxy passes the close on
  ASSERT_TRUE(q.Enqueue("m", "s/2", "{}").ok());
  EXPECT_EQ(Int(*admin, {"XLEN", stream}), 2);
  EXPECT_EQ(client->connects(), connects + 1);

  // CLIENT KILL while the command waits in the server (writes paused): it
  // never runs, the call fails, and it is not sent again.
  FARM_ASSERT_OK_AND_ASSIGN(cid, client->Command({"CLIENT", "ID"}));
  ASSERT_TRUE(admin->Command({"CLIENT", "PAUSE", "5000", "WRITE"}).ok());
  absl::Status mid_call;
  std::thread caller([&] { mid_call = q.Enqueue("m", "s/3", "{}").status(); });
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(admin->Command({"CLIENT", "KILL", "ID", absl::StrCat(cid.AsInt().value_or(0))}).ok());
  ASSERT_TRUE(admin->Command({"CLIENT", "UNPAUSE"}).ok());
  caller.join();
  EXPECT_EQ(mid_call.code(), absl::StatusCode::kUnavailable) << mid_call;
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(Int(*admin, {"XLEN", stream}), 2);
  FARM_ASSERT_OK_AND_ASSIGN(RedisReply all, admin->Command({"XRANGE", stream, "-", "+"}));
  EXPECT_FALSE(absl::StrContains(all.DebugString(), "s/3")) << all.DebugString();
  ASSERT_TRUE(q.Enqueue("m", "s/4", "{}").ok());
  EXPECT_EQ(Int(*admin, {"XLEN", stream}), 3);
}

// (b, end to end) The coordinator's Redis connections lose every 9th reply
// after the command ran. Each failure surfaces as an error (the worker sends
// its report again, the client its submit); nothing is done twice: every image
// is recorded once, every job counted done once, and the sweep completes.
TEST(RedisSemanticsTest, ACoordinatorLosingRedisRepliesRecordsEveryImageOnce) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:5", .lease_seconds = 3,
                                                     .job_size = 2}));
  FARM_ASSERT_OK_AND_ASSIGN(auto proxy, TcpProxy::Start(farm->redis()->port()));
  farm->set_coordinator_redis_url(proxy->url());
  ASSERT_TRUE(farm->StopCoordinator().ok());
  ASSERT_TRUE(farm->StartCoordinator().ok()) << farm->Logs();
  proxy->DropEveryNthReply(9);
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(farm->StartWorker().ok());

  const json spec = SmallSpec("lossy", 60, 2);  // 30 jobs
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, SubmitWithRequestId(*farm, spec, "lossy-request"));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Seconds(120)));
  EXPECT_GT(proxy->replies_dropped(), 5);
  EXPECT_EQ(st.done(), 60) << farm->Logs();
  EXPECT_EQ(st.failed(), 0);
  EXPECT_EQ(st.jobs_done(), 30);
  const SweepFolderCheck check = CheckFolder(*farm, spec, 2);
  EXPECT_TRUE(check.ok()) << check.Summary();
  FARM_ASSERT_OK_AND_ASSIGN(auto redis, RedisClient::Connect(farm->redis()->client_options()));
  EXPECT_EQ(Int(*redis, {"ZCARD", "sdfarm:sweeps"}), 1);
  FARM_ASSERT_OK_AND_ASSIGN(RedisReply jobs_done, redis->Command({"HGET", "sdfarm:sweep:" + id, "jobs_done"}));
  EXPECT_EQ(jobs_done.AsInt().value_or(-1), 30);
  EXPECT_EQ(Int(*redis, {"XLEN", kStream}), 0);
  EXPECT_EQ(PendingCount(*redis, kStream), 0);
  EXPECT_EQ(Int(*redis, {"XLEN", "sdfarm:dead:tiny-sd"}), 0);
}

// (b, c) The reply to the script that creates a sweep is lost: Submit fails,
// the client sends it again with the same request id, and gets the sweep the
// first attempt created, which then runs to the end.
TEST(RedisSemanticsTest, ASubmitWhoseRedisReplyWasLostRunsOnceWhenSentAgain) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:5", .job_size = 2}));
  FARM_ASSERT_OK_AND_ASSIGN(auto proxy, TcpProxy::Start(farm->redis()->port()));
  farm->set_coordinator_redis_url(proxy->url());
  ASSERT_TRUE(farm->StopCoordinator().ok());
  ASSERT_TRUE(farm->StartCoordinator().ok()) << farm->Logs();
  ASSERT_TRUE(farm->StartWorker().ok());
  const json spec = SmallSpec("resent", 6, 2);
  absl::SleepFor(absl::Milliseconds(500));  // the scheduler is idle: the next reply is the create script's
  proxy->DropNextReply();
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, SubmitWithRequestId(*farm, spec, "resent-request"));
  EXPECT_EQ(proxy->replies_dropped(), 1);
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Seconds(60)));
  EXPECT_EQ(st.done(), 6) << farm->Logs();
  const SweepFolderCheck check = CheckFolder(*farm, spec, 2);
  EXPECT_TRUE(check.ok()) << check.Summary();
  FARM_ASSERT_OK_AND_ASSIGN(auto redis, RedisClient::Connect(farm->redis()->client_options()));
  EXPECT_EQ(Int(*redis, {"ZCARD", "sdfarm:sweeps"}), 1);
}

// (c) A submit sent again with the same request id, concurrently or after a
// coordinator restart, gets the sweep the first one made.
TEST(RedisSemanticsTest, TheSameRequestIdMakesOneSweep) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  const json spec = SmallSpec("once", 4, 2);
  FARM_ASSERT_OK_AND_ASSIGN(std::string first, SubmitWithRequestId(*farm, spec, "req-1"));
  std::vector<std::string> ids(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto r = SubmitWithRequestId(*farm, spec, "req-1");
      ids[i] = r.ok() ? *r : r.status().ToString();
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& got : ids) EXPECT_EQ(got, first);
  ASSERT_TRUE(farm->KillCoordinator().ok());
  ASSERT_TRUE(farm->StartCoordinator().ok()) << farm->Logs();
  FARM_ASSERT_OK_AND_ASSIGN(std::string after, SubmitWithRequestId(*farm, spec, "req-1"));
  EXPECT_EQ(after, first);
  FARM_ASSERT_OK_AND_ASSIGN(auto redis, RedisClient::Connect(farm->redis()->client_options()));
  EXPECT_EQ(Int(*redis, {"ZCARD", "sdfarm:sweeps"}), 1);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
  pb::ListResponse list;
  ASSERT_TRUE(farm->client()->List(&ctx, pb::ListRequest(), &list).ok());
  EXPECT_EQ(list.sweeps_size(), 1);
}

// Redis restarting while the coordinator starts (both restarted at once): the
// coordinator waits for it instead of exiting, then resumes the sweep.
TEST(RedisSemanticsTest, TheCoordinatorWaitsForRedisAtStartUp) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1, .engine = "synthetic:5", .job_size = 2}));
  const json spec = SmallSpec("waited", 8, 2);
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, SubmitWithRequestId(*farm, spec, "waited-request"));
  ASSERT_TRUE(farm->KillCoordinator().ok());
  ASSERT_TRUE(farm->redis()->Stop().ok());
  ASSERT_TRUE(farm->StartCoordinatorNoWait().ok());
  absl::SleepFor(absl::Seconds(2));
  ASSERT_TRUE(farm->redis()->Restart().ok());
  // The coordinator opens its port once it has loaded the sweeps from Redis.
  ASSERT_TRUE(farm->WaitForCoordinator(absl::Seconds(30)).ok()) << farm->Logs();
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "Redis at start-up")) << farm->CoordinatorLog();
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Seconds(60)));
  EXPECT_EQ(st.done(), 8) << farm->Logs();
  const SweepFolderCheck check = CheckFolder(*farm, spec, 2);
  EXPECT_TRUE(check.ok()) << check.Summary();
}

// (d) Redis that may evict keys could silently drop queued jobs: the
// coordinator says so loudly at start-up (and says nothing with noeviction).
TEST(RedisSemanticsTest, AnEvictingRedisIsWarnedAboutAtStartUp) {
  {
    FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .redis = {.maxmemory_policy = "allkeys-lru"}}));
    const std::string log = farm->CoordinatorLog();
    EXPECT_TRUE(absl::StrContains(log, "WARNING")) << log;
    EXPECT_TRUE(absl::StrContains(log, "maxmemory-policy allkeys-lru")) << log;
    EXPECT_TRUE(absl::StrContains(log, "noeviction")) << log;
  }
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0}));
  EXPECT_FALSE(absl::StrContains(farm->CoordinatorLog(), "maxmemory-policy")) << farm->CoordinatorLog();
}

}  // namespace
}  // namespace sdfarm::testing
