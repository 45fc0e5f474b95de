// What only the Redis implementation has: the leader-lease guard around
// every state-changing transition (and none around reads), the key schema
// the coordinator has always used (data written the old way stays valid),
// and RemoveSweep deleting the sweep's index entries with its state.
#include "queue/redis_job_queue.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/job_binding.h"
#include "coordinator/job_queue.h"
#include "coordinator/leader_lease.h"
#include "queue/keys.h"
#include "tests/common/redis_server_fixture.h"

namespace sdfarm::queue {
namespace {

using ::sdfarm::testing::RedisServer;

class RedisJobQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    auto admin = RedisClient::Connect(server_->client_options());
    ASSERT_TRUE(admin.ok()) << admin.status();
    admin_ = std::move(*admin);
    ASSERT_TRUE(admin_->Command({"HSET", "sdfarm:sweep:s1", "spec", "{}", "state", "running", "next_job", "0",
                                 "jobs_done", "0"})
                    .ok());
  }

  RedisJobQueueOptions Options(ScriptGuard guard = nullptr) {
    RedisJobQueueOptions o;
    o.redis = server_->client_options();
    o.guard = std::move(guard);
    return o;
  }

  std::unique_ptr<RedisServer> server_;
  std::unique_ptr<RedisClient> admin_;
  const SweepRef s1_{"s1", "sd15"};
};

TEST(KeySchema, NamesTheKeysTheCoordinatorHasAlwaysUsed) {
  KeySchema k("sdfarm");
  EXPECT_EQ(k.Stream("sd15"), "sdfarm:jobs:sd15");
  EXPECT_EQ(k.DeadLetters("sd15"), "sdfarm:dead:sd15");
  EXPECT_EQ(k.Sweeps(), "sdfarm:sweeps");
  EXPECT_EQ(k.Sweep("a1"), "sdfarm:sweep:a1");
  EXPECT_EQ(k.InFlight("a1"), "sdfarm:sweep:a1:inflight");
  EXPECT_EQ(k.Failures("a1"), "sdfarm:sweep:a1:failures");
  EXPECT_EQ(k.FailedItems("a1"), "sdfarm:sweep:a1:failed");
  EXPECT_EQ(k.Request("r"), "sdfarm:request:r");
  EXPECT_EQ(k.Name("fox"), "sdfarm:name:fox");
  EXPECT_EQ(k.Leader(), "sdfarm:leader");
  EXPECT_STREQ(kGroup, coordinator::JobQueue::kGroup);
  coordinator::JobQueue old(nullptr, "sdfarm");
  EXPECT_EQ(k.Stream("sd15"), old.StreamKey("sd15"));
  EXPECT_EQ(k.DeadLetters("sd15"), old.DeadLetterKey("sd15"));
}

TEST_F(RedisJobQueueTest, EveryStateChangingTransitionGoesThroughTheGuardAndNoRead) {
  std::vector<std::string> guarded;  // the first line of each script the guard saw
  RedisJobQueue q(Options([&](RedisClient* redis, std::vector<std::string> argv) {
    guarded.push_back(argv.at(1));
    return redis->Command(argv);
  }));
  size_t seen = 0;
  auto through_guard = [&] {
    const bool went = guarded.size() > seen;
    seen = guarded.size();
    return went;
  };
  auto e = q.Enqueue(s1_, 0, "s1/0", "{}");
  ASSERT_TRUE(e.ok() && e->outcome == EnqueueOutcome::kEnqueued);
  EXPECT_TRUE(through_guard()) << "Enqueue";
  ASSERT_TRUE(q.Enqueue(s1_, 1, "s1/1", "{}").ok());
  through_guard();
  auto d = q.ClaimNew("sd15", "w1");
  ASSERT_TRUE(d.ok() && d->has_value());
  EXPECT_TRUE(through_guard()) << "ClaimNew";
  const HeldJob h{s1_, "w1", (*d)->stream_id, "s1/0", 0};
  ASSERT_TRUE(q.Check(h).ok());
  EXPECT_FALSE(through_guard()) << "Check";
  ASSERT_TRUE(q.Renew(h).ok());
  EXPECT_TRUE(through_guard()) << "Renew";
  ASSERT_TRUE(q.RedeliverOwn("sd15", "w1", {}).ok());
  EXPECT_TRUE(through_guard()) << "RedeliverOwn";
  ASSERT_TRUE(q.ReclaimExpired("sd15", "w2", absl::Milliseconds(1)).ok());
  EXPECT_TRUE(through_guard()) << "ReclaimExpired";
  ASSERT_TRUE(q.AwaitingReclaim("sd15", (*d)->stream_id, absl::Seconds(60)).ok());
  ASSERT_TRUE(q.Depth("sd15").ok());
  ASSERT_TRUE(q.Cursor(s1_).ok());
  ASSERT_TRUE(q.InFlight(s1_).ok());
  ASSERT_TRUE(q.FailedItems(s1_).ok());
  ASSERT_TRUE(q.DeadLetters("sd15", 10).ok());
  ASSERT_TRUE(q.FindLost(s1_, absl::Seconds(60)).ok());
  EXPECT_FALSE(through_guard()) << "reads";
  ASSERT_TRUE(q.Finish(h).ok());
  EXPECT_TRUE(through_guard()) << "Finish";
  ASSERT_TRUE(q.Fail(h, FailRequest{}).ok());
  EXPECT_TRUE(through_guard()) << "Fail";
  ASSERT_TRUE(q.HoldForStorage("sd15", "w1", "1-0").ok());
  EXPECT_TRUE(through_guard()) << "HoldForStorage";
  ASSERT_TRUE(q.SkipRecorded(s1_, 2, 3).ok());
  EXPECT_TRUE(through_guard()) << "SkipRecorded";
  ASSERT_TRUE(q.Requeue(s1_, LostJob{0, "1-0"}, "s1/0", "{}", absl::Seconds(60)).ok());
  EXPECT_TRUE(through_guard()) << "Requeue";
  ASSERT_TRUE(q.Pause(s1_, PauseScope::kWaiting).ok());
  EXPECT_TRUE(through_guard()) << "Pause";
  ASSERT_TRUE(q.Resume(s1_).ok());
  EXPECT_TRUE(through_guard()) << "Resume";
  ASSERT_TRUE(q.Cancel(s1_).ok());
  EXPECT_TRUE(through_guard()) << "Cancel";
  ASSERT_TRUE(q.RemoveSweep(s1_, "n", "r").ok());
  EXPECT_TRUE(through_guard()) << "RemoveSweep";
}

TEST_F(RedisJobQueueTest, ACoordinatorThatLostTheLeaderLeaseChangesNothing) {
  coordinator::LeaderLeaseOptions lo;
  lo.redis = server_->client_options();
  lo.key = KeySchema().Leader();
  lo.ttl = absl::Seconds(30);
  std::string lost_why;
  lo.on_lost = [&](const std::string& why) { lost_why = why; };
  auto lease = coordinator::LeaderLease::Acquire(lo);
  ASSERT_TRUE(lease.ok()) << lease.status();
  coordinator::LeaderLease* l = lease->get();
  RedisJobQueue q(Options([l](RedisClient* redis, std::vector<std::string> argv) {
    return l->Eval(redis, std::move(argv));
  }));
  auto e = q.Enqueue(s1_, 0, "s1/0", "{}");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->outcome, EnqueueOutcome::kEnqueued);
  auto d = q.ClaimNew("sd15", "w1");
  ASSERT_TRUE(d.ok() && d->has_value()) << d.status();

  // Another coordinator takes the lease (this one stalled past it).
  ASSERT_TRUE(admin_->Command({"SET", lo.key, "another-instance"}).ok());
  auto refused = q.Enqueue(s1_, 1, "s1/1", "{}");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(lost_why.find("another-instance"), std::string::npos) << lost_why;
  EXPECT_FALSE(q.Finish(HeldJob{s1_, "w1", (*d)->stream_id, "s1/0", 0}).ok());
  EXPECT_FALSE(q.ClaimNew("sd15", "w2").ok());
  EXPECT_FALSE(q.Cancel(s1_).ok());
  // Reads still answer, and show nothing changed.
  auto cursor = q.Cursor(s1_);
  ASSERT_TRUE(cursor.ok() && cursor->has_value());
  EXPECT_EQ((*cursor)->next_job, 1);
  EXPECT_EQ((*cursor)->jobs_done, 0);
  EXPECT_EQ((*cursor)->state, SweepState::kRunning);
  auto depth = q.Depth("sd15");
  ASSERT_TRUE(depth.ok());
  EXPECT_EQ(depth->length, 1);
  EXPECT_EQ(depth->pending, 1);
  ASSERT_TRUE(admin_->Command({"DEL", lo.key}).ok());  // so that Release has nothing of another's to keep
}

TEST_F(RedisJobQueueTest, JobsWrittenTheOldWayAreServedAndBoundTheSameWay) {
  // Enqueued and recorded in flight as coordinator_service.cc does today.
  coordinator::JobQueue old(admin_.get(), "sdfarm");
  ASSERT_TRUE(old.EnsureGroup("sd15").ok());
  auto id = old.Enqueue("sd15", "s1/0", "{\"old\":1}");
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(admin_->Command({"HSET", "sdfarm:sweep:s1:inflight", "0", *id}).ok());
  ASSERT_TRUE(admin_->Command({"HSET", "sdfarm:sweep:s1", "next_job", "1"}).ok());

  RedisJobQueue q(Options());
  auto d = q.ClaimNew("sd15", "w1");
  ASSERT_TRUE(d.ok() && d->has_value()) << d.status();
  EXPECT_EQ((*d)->stream_id, *id);
  EXPECT_EQ((*d)->payload, "{\"old\":1}");
  // The old binding check and the new one agree on the delivery.
  auto old_binding = coordinator::CheckBinding(
      admin_.get(), {"sdfarm:jobs:sd15", "sdfarm:sweep:s1:inflight", "w1", *id, "s1/0", 0});
  ASSERT_TRUE(old_binding.ok());
  EXPECT_EQ(*old_binding, coordinator::Binding::kBound);
  auto b = q.Check(HeldJob{s1_, "w1", *id, "s1/0", 0});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, Binding::kBound);
  auto f = q.Finish(HeldJob{s1_, "w1", *id, "s1/0", 0});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->outcome, FinishOutcome::kFinished);
  EXPECT_EQ(f->jobs_done, 1);
  auto length = old.Length("sd15");
  ASSERT_TRUE(length.ok());
  EXPECT_EQ(*length, 0);
}

TEST_F(RedisJobQueueTest, RemoveSweepFreesItsNameAndRequestButNotAnotherSweeps) {
  ASSERT_TRUE(admin_->Command({"SET", "sdfarm:name:fox", "s1"}).ok());
  ASSERT_TRUE(admin_->Command({"SET", "sdfarm:request:r1", "s1"}).ok());
  ASSERT_TRUE(admin_->Command({"SET", "sdfarm:name:owl", "s2"}).ok());
  ASSERT_TRUE(admin_->Command({"ZADD", "sdfarm:sweeps", "1", "s1", "2", "s2"}).ok());
  RedisJobQueue q(Options());
  auto removed = q.RemoveSweep(s1_, "fox", "r1");
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_TRUE(*removed);
  EXPECT_TRUE(admin_->Command({"GET", "sdfarm:name:fox"})->is_nil());
  EXPECT_TRUE(admin_->Command({"GET", "sdfarm:request:r1"})->is_nil());
  // A name given that is another sweep's stays.
  ASSERT_TRUE(admin_->Command({"HSET", "sdfarm:sweep:s3", "spec", "{}"}).ok());
  ASSERT_TRUE(q.RemoveSweep(SweepRef{"s3", "sd15"}, "owl", "").ok());
  EXPECT_EQ(admin_->Command({"GET", "sdfarm:name:owl"})->str(), "s2");
  auto members = admin_->Command({"ZRANGE", "sdfarm:sweeps", "0", "-1"});
  ASSERT_TRUE(members.ok());
  ASSERT_EQ(members->array().size(), 1u);
  EXPECT_EQ(members->array()[0].str(), "s2");
}

}  // namespace
}  // namespace sdfarm::queue
