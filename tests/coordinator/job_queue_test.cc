// JobQueue against a real redis-server (AOF, appendfsync always): delivery,
// exclusivity, leases and takeover, renewal, dead letters, deadlines,
// durability across restarts and crashes.
#include "coordinator/job_queue.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "absl/time/clock.h"
#include "tests/common/redis_server_fixture.h"

namespace sdfarm::coordinator {
namespace {

using ::sdfarm::testing::RedisServer;

class JobQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    redis_ = Connect();
    ASSERT_NE(redis_, nullptr);
    queue_ = std::make_unique<JobQueue>(redis_.get(), "test");
  }

  std::unique_ptr<RedisClient> Connect() {
    auto c = RedisClient::Connect(server_->client_options());
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  QueuedJob MustClaim(JobQueue& q, const std::string& worker) {
    auto job = q.Claim("sd15", worker, absl::Seconds(2));
    EXPECT_TRUE(job.ok()) << job.status();
    EXPECT_TRUE(job.ok() && job->has_value()) << "no job for " << worker;
    return job.ok() && job->has_value() ? **job : QueuedJob{};
  }

  std::unique_ptr<RedisServer> server_;
  std::unique_ptr<RedisClient> redis_;
  std::unique_ptr<JobQueue> queue_;
};

TEST_F(JobQueueTest, EnqueueClaimAck) {
  ASSERT_TRUE(queue_->EnsureGroup("sd15").ok());
  ASSERT_TRUE(queue_->EnsureGroup("sd15").ok());  // idempotent
  std::string payload("bin\0ary", 7);
  auto id = queue_->Enqueue("sd15", "sweep1/0", payload);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*queue_->Length("sd15"), 1);
  EXPECT_EQ(*queue_->Pending("sd15"), 0);

  QueuedJob job = MustClaim(*queue_, "w1");
  EXPECT_EQ(job.stream_id, *id);
  EXPECT_EQ(job.job_id, "sweep1/0");
  EXPECT_EQ(job.payload, payload);
  EXPECT_EQ(job.deliveries, 1);
  EXPECT_EQ(*queue_->Pending("sd15"), 1);
  EXPECT_TRUE(*queue_->IsOwner("sd15", "w1", job.stream_id));
  EXPECT_FALSE(*queue_->IsOwner("sd15", "w2", job.stream_id));

  ASSERT_TRUE(queue_->Ack("sd15", job.stream_id).ok());
  ASSERT_TRUE(queue_->Ack("sd15", job.stream_id).ok());  // idempotent
  EXPECT_EQ(*queue_->Pending("sd15"), 0);
  EXPECT_EQ(*queue_->Length("sd15"), 0);  // XDEL on ack: nothing to trim
  EXPECT_FALSE(*queue_->IsOwner("sd15", "w1", job.stream_id));
  EXPECT_EQ(queue_->Renew("sd15", "w1", job.stream_id).code(), absl::StatusCode::kNotFound);
}

TEST_F(JobQueueTest, JobsEnqueuedBeforeTheGroupExistsAreDelivered) {
  ASSERT_TRUE(queue_->Enqueue("sd15", "early", "p").ok());  // no group yet
  QueuedJob job = MustClaim(*queue_, "w1");                  // Claim creates it from ID 0
  EXPECT_EQ(job.job_id, "early");
}

TEST_F(JobQueueTest, ClaimSurvivesTheStreamBeingDeleted) {
  ASSERT_TRUE(queue_->Enqueue("sd15", "a", "p").ok());
  MustClaim(*queue_, "w1");
  ASSERT_TRUE(redis_->Command({"DEL", queue_->StreamKey("sd15")}).ok());
  auto none = queue_->Claim("sd15", "w1", absl::Milliseconds(50));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  ASSERT_TRUE(queue_->Enqueue("sd15", "b", "p").ok());
  EXPECT_EQ(MustClaim(*queue_, "w1").job_id, "b");
  auto reclaimed = queue_->ReclaimExpired("other-model", "w1", absl::Milliseconds(1), 5);
  ASSERT_TRUE(reclaimed.ok()) << reclaimed.status();
  EXPECT_TRUE(reclaimed->empty());
  EXPECT_EQ(*queue_->Pending("other-model"), 0);
  EXPECT_EQ(*queue_->IsOwner("other-model", "w1", "1-0"), false);
}

TEST_F(JobQueueTest, TwoWorkersNeverGetTheSameJob) {
  ASSERT_TRUE(queue_->EnsureGroup("sd15").ok());
  constexpr int kJobs = 200;
  for (int i = 0; i < kJobs; ++i) ASSERT_TRUE(queue_->Enqueue("sd15", absl::StrCat("j", i), "p").ok());
  std::vector<std::string> got[2];
  std::thread workers[2];
  for (int w = 0; w < 2; ++w) {
    workers[w] = std::thread([&, w] {
      auto redis = Connect();  // one client per thread
      if (redis == nullptr) return;
      JobQueue q(redis.get(), "test");
      for (;;) {
        auto job = q.Claim("sd15", absl::StrCat("w", w), absl::Milliseconds(100));
        if (!job.ok() || !job->has_value()) return;
        got[w].push_back((*job)->job_id);
      }
    });
  }
  for (auto& t : workers) t.join();
  std::set<std::string> all(got[0].begin(), got[0].end());
  all.insert(got[1].begin(), got[1].end());
  EXPECT_EQ(got[0].size() + got[1].size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(all.size(), static_cast<size_t>(kJobs));  // no duplicates
  EXPECT_EQ(*queue_->Pending("sd15"), kJobs);
}

TEST_F(JobQueueTest, DeadWorkerLosesItsJobAfterTheLease) {
  const absl::Duration lease = absl::Milliseconds(300);
  ASSERT_TRUE(queue_->Enqueue("sd15", "j", "p").ok());
  QueuedJob job = MustClaim(*queue_, "dead");

  auto early = queue_->ReclaimExpired("sd15", "w2", lease, 10);  // lease not over yet
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_TRUE(early->empty());

  absl::SleepFor(lease + absl::Milliseconds(50));
  auto taken = queue_->ReclaimExpired("sd15", "w2", lease, 10);
  ASSERT_TRUE(taken.ok()) << taken.status();
  ASSERT_EQ(taken->size(), 1u);
  EXPECT_EQ((*taken)[0].stream_id, job.stream_id);
  EXPECT_EQ((*taken)[0].job_id, "j");
  EXPECT_EQ((*taken)[0].payload, "p");
  EXPECT_EQ((*taken)[0].deliveries, 2);
  EXPECT_FALSE(*queue_->IsOwner("sd15", "dead", job.stream_id));
  EXPECT_TRUE(*queue_->IsOwner("sd15", "w2", job.stream_id));
  // The old worker comes back: it cannot renew or complete the job.
  EXPECT_EQ(queue_->Renew("sd15", "dead", job.stream_id).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(*queue_->AckIfOwner("sd15", "dead", job.stream_id));
  EXPECT_EQ(*queue_->Pending("sd15"), 1);

  // And a third takeover counts again.
  absl::SleepFor(lease + absl::Milliseconds(50));
  taken = queue_->ReclaimExpired("sd15", "w3", lease, 10);
  ASSERT_TRUE(taken.ok()) << taken.status();
  ASSERT_EQ(taken->size(), 1u);
  EXPECT_EQ((*taken)[0].deliveries, 3);
  EXPECT_TRUE(*queue_->AckIfOwner("sd15", "w3", job.stream_id));
  EXPECT_EQ(*queue_->Pending("sd15"), 0);
  EXPECT_EQ(*queue_->Length("sd15"), 0);
}

TEST_F(JobQueueTest, RenewKeepsAJobFromBeingReclaimed) {
  const absl::Duration lease = absl::Milliseconds(300);
  ASSERT_TRUE(queue_->Enqueue("sd15", "long", "p").ok());
  QueuedJob job = MustClaim(*queue_, "w1");
  for (int i = 0; i < 6; ++i) {  // 600 ms in all, twice the lease
    absl::SleepFor(lease / 3);
    ASSERT_TRUE(queue_->Renew("sd15", "w1", job.stream_id).ok());
    auto taken = queue_->ReclaimExpired("sd15", "w2", lease, 10);
    ASSERT_TRUE(taken.ok()) << taken.status();
    EXPECT_TRUE(taken->empty()) << "reclaimed despite renewal at step " << i;
  }
  EXPECT_TRUE(*queue_->IsOwner("sd15", "w1", job.stream_id));
  auto p = redis_->Command({"XPENDING", queue_->StreamKey("sd15"), "workers", "-", "+", "10"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p->array()[0].array()[3].AsInt(), 1);  // renewals are not deliveries
}

TEST_F(JobQueueTest, DeadLetter) {
  ASSERT_TRUE(queue_->Enqueue("sd15", "bad", "payload").ok());
  ASSERT_TRUE(queue_->Enqueue("sd15", "good", "payload").ok());
  QueuedJob bad = MustClaim(*queue_, "w1");
  QueuedJob good = MustClaim(*queue_, "w1");
  bad.deliveries = kDefaultMaxFailures + 1;
  ASSERT_TRUE(queue_->DeadLetter("sd15", bad, "CUDA out of memory").ok());
  ASSERT_TRUE(queue_->DeadLetter("sd15", bad, "again").ok());  // no longer pending: nothing recorded
  ASSERT_TRUE(queue_->Ack("sd15", good.stream_id).ok());
  ASSERT_TRUE(queue_->DeadLetter("sd15", good, "late failure").ok());  // finished jobs stay finished

  auto dead = queue_->DeadLetters("sd15", 10);
  ASSERT_TRUE(dead.ok()) << dead.status();
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].job_id, "bad");
  EXPECT_EQ((*dead)[0].payload, "payload");
  EXPECT_EQ((*dead)[0].stream_id, bad.stream_id);
  EXPECT_EQ((*dead)[0].deliveries, kDefaultMaxFailures + 1);
  EXPECT_EQ((*dead)[0].error, "CUDA out of memory");
  EXPECT_EQ(*queue_->Pending("sd15"), 0);
  EXPECT_EQ(*queue_->Length("sd15"), 0);
}

TEST_F(JobQueueTest, ClaimTimesOutWithNulloptWithinItsDeadline) {
  absl::Time start = absl::Now();
  auto none = queue_->Claim("sd15", "w1", absl::Milliseconds(300));
  absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  EXPECT_GE(took, absl::Milliseconds(290));
  EXPECT_LT(took, absl::Milliseconds(1500));

  none = queue_->Claim("sd15", "w1", absl::ZeroDuration());  // no wait at all
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());

  // A job enqueued while a worker waits wakes it up.
  std::thread producer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    auto redis = Connect();
    if (redis != nullptr) (void)JobQueue(redis.get(), "test").Enqueue("sd15", "wake", "p");
  });
  auto job = queue_->Claim("sd15", "w1", absl::Seconds(5));
  producer.join();
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(job->has_value());
  EXPECT_EQ((*job)->job_id, "wake");
}

TEST_F(JobQueueTest, JobsAndPendingListSurviveRestarts) {
  const absl::Duration lease = absl::Milliseconds(200);
  ASSERT_TRUE(queue_->Enqueue("sd15", "claimed", "p1").ok());
  ASSERT_TRUE(queue_->Enqueue("sd15", "waiting", "p2").ok());
  QueuedJob claimed = MustClaim(*queue_, "w1");
  ASSERT_EQ(claimed.job_id, "claimed");

  ASSERT_TRUE(server_->Restart().ok());  // clean shutdown
  EXPECT_EQ(*queue_->Length("sd15"), 2);
  EXPECT_EQ(*queue_->Pending("sd15"), 1);
  EXPECT_TRUE(*queue_->IsOwner("sd15", "w1", claimed.stream_id));

  ASSERT_TRUE(server_->Kill().ok());  // crash: only the fsynced AOF is left
  ASSERT_TRUE(server_->Restart().ok());
  EXPECT_EQ(*queue_->Length("sd15"), 2);
  EXPECT_EQ(*queue_->Pending("sd15"), 1);
  EXPECT_TRUE(*queue_->IsOwner("sd15", "w1", claimed.stream_id));
  // The group's cursor survived: the next claim gets the waiting job, not a repeat.
  QueuedJob next = MustClaim(*queue_, "w2");
  EXPECT_EQ(next.job_id, "waiting");
  // The lease of the job claimed before the crash still expires.
  absl::SleepFor(lease + absl::Milliseconds(50));
  auto taken = queue_->ReclaimExpired("sd15", "w3", lease, 1);
  ASSERT_TRUE(taken.ok()) << taken.status();
  ASSERT_EQ(taken->size(), 1u);
  EXPECT_EQ((*taken)[0].job_id, "claimed");
  EXPECT_EQ((*taken)[0].deliveries, 2);
}

TEST_F(JobQueueTest, ReconnectsAfterKillAndRestart) {
  ASSERT_TRUE(queue_->Enqueue("sd15", "a", "p").ok());
  ASSERT_TRUE(server_->Kill().ok());
  auto down = queue_->Enqueue("sd15", "b", "p");
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  auto claim_down = queue_->Claim("sd15", "w1", absl::Milliseconds(100));
  EXPECT_EQ(claim_down.status().code(), absl::StatusCode::kUnavailable) << claim_down.status();
  ASSERT_TRUE(server_->Restart().ok());
  QueuedJob job = MustClaim(*queue_, "w1");  // the same JobQueue and client carry on
  EXPECT_EQ(job.job_id, "a");
  ASSERT_TRUE(queue_->Ack("sd15", job.stream_id).ok());
  EXPECT_EQ(*queue_->Length("sd15"), 0);
}

TEST_F(JobQueueTest, BadArguments) {
  EXPECT_EQ(queue_->ReclaimExpired("sd15", "w", absl::ZeroDuration(), 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(queue_->ReclaimExpired("sd15", "w", absl::Seconds(1), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(queue_->EnsureGroup("sd15").ok());
  EXPECT_EQ(queue_->IsOwner("sd15", "w", "not-an-id").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sdfarm::coordinator
