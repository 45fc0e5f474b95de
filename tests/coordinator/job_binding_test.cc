// The delivery binding (coordinator/job_binding.h) against a real
// redis-server: a delivery is bound only for its own consumer, under its own
// job id, when the sweep's in-flight record points at it; renewal resets the
// idle time only then; a worker's own pending deliveries are handed back to
// it, counted, and skipped when already handed.
#include "coordinator/job_binding.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "absl/time/clock.h"
#include "tests/common/redis_server_fixture.h"

namespace sdfarm::coordinator {
namespace {

using ::sdfarm::testing::RedisServer;

constexpr char kInflight[] = "test:sweep:s1:inflight";

class JobBindingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    auto c = RedisClient::Connect(server_->client_options());
    ASSERT_TRUE(c.ok()) << c.status();
    redis_ = std::move(*c);
    queue_ = std::make_unique<JobQueue>(redis_.get(), "test");
    ASSERT_TRUE(queue_->EnsureGroup("sd15").ok());
  }

  // Job s1/<index> enqueued, recorded in flight, and claimed by `worker`.
  QueuedJob Delivered(int64_t index, const std::string& worker) {
    const std::string job_id = "s1/" + std::to_string(index);
    auto id = queue_->Enqueue("sd15", job_id, "{}");
    EXPECT_TRUE(id.ok());
    EXPECT_TRUE(redis_->Command({"HSET", kInflight, std::to_string(index), *id}).ok());
    auto job = queue_->Claim("sd15", worker, absl::ZeroDuration());
    EXPECT_TRUE(job.ok() && job->has_value());
    return job.ok() && job->has_value() ? **job : QueuedJob{};
  }

  DeliveryRef Ref(const std::string& worker, const std::string& stream_id, const std::string& job_id, int64_t index) {
    return {queue_->StreamKey("sd15"), kInflight, worker, stream_id, job_id, index};
  }

  Binding Check(const DeliveryRef& d) {
    auto b = CheckBinding(redis_.get(), d);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *b : Binding::kNotHeld;
  }

  int64_t IdleMs(const std::string& stream_id) {
    auto p = redis_->Command({"XPENDING", queue_->StreamKey("sd15"), JobQueue::kGroup, stream_id, stream_id, "1"});
    if (!p.ok() || p->array().empty()) return -1;
    return p->array()[0].array()[2].AsInt().value_or(-1);
  }

  std::unique_ptr<RedisServer> server_;
  std::unique_ptr<RedisClient> redis_;
  std::unique_ptr<JobQueue> queue_;
};

TEST_F(JobBindingTest, BoundOnlyForItsConsumerItsJobAndTheInFlightRecord) {
  const QueuedJob a = Delivered(0, "w1");
  const QueuedJob b = Delivered(1, "w2");
  EXPECT_EQ(Check(Ref("w1", a.stream_id, "s1/0", 0)), Binding::kBound);
  // Another worker's delivery: not held.
  EXPECT_EQ(Check(Ref("w1", b.stream_id, "s1/1", 1)), Binding::kNotHeld);
  // Its own delivery named as another job (of this sweep or another): mismatch.
  EXPECT_EQ(Check(Ref("w1", a.stream_id, "s1/1", 1)), Binding::kMismatch);
  EXPECT_EQ(Check(Ref("w1", a.stream_id, "s2/0", 0)), Binding::kMismatch);
  // The right job id, but the in-flight record points elsewhere.
  ASSERT_TRUE(redis_->Command({"HSET", kInflight, "0", b.stream_id}).ok());
  EXPECT_EQ(Check(Ref("w1", a.stream_id, "s1/0", 0)), Binding::kMismatch);
  // No in-flight record (finished, cancelled): gone.
  ASSERT_TRUE(redis_->Command({"HDEL", kInflight, "0"}).ok());
  EXPECT_EQ(Check(Ref("w1", a.stream_id, "s1/0", 0)), Binding::kGone);
  // Finished (acknowledged, out of the in-flight record): gone, which is
  // what a worker resending an acknowledged report sees.
  ASSERT_TRUE(queue_->Ack("sd15", b.stream_id).ok());
  ASSERT_TRUE(redis_->Command({"HDEL", kInflight, "1"}).ok());
  EXPECT_EQ(Check(Ref("w2", b.stream_id, "s1/1", 1)), Binding::kGone);
  // In flight but never delivered: nobody's, so not held by whoever asks.
  auto waiting = queue_->Enqueue("sd15", "s1/3", "{}");
  ASSERT_TRUE(waiting.ok());
  ASSERT_TRUE(redis_->Command({"HSET", kInflight, "3", *waiting}).ok());
  EXPECT_EQ(Check(Ref("w1", *waiting, "s1/3", 3)), Binding::kNotHeld);
  // No stream or group at all: gone, not an error.
  EXPECT_EQ(Check({"test:jobs:nothing", kInflight, "w1", a.stream_id, "s1/0", 0}), Binding::kGone);
}

TEST_F(JobBindingTest, RenewalResetsTheIdleTimeOnlyWhenBound) {
  const QueuedJob a = Delivered(0, "w1");
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_GE(IdleMs(a.stream_id), 250);
  auto wrong = RenewBinding(redis_.get(), Ref("w1", a.stream_id, "s1/5", 5));
  ASSERT_TRUE(wrong.ok());
  EXPECT_EQ(*wrong, Binding::kMismatch);
  EXPECT_GE(IdleMs(a.stream_id), 250) << "a refused renewal renewed";
  auto thief = RenewBinding(redis_.get(), Ref("w2", a.stream_id, "s1/0", 0));
  ASSERT_TRUE(thief.ok());
  EXPECT_EQ(*thief, Binding::kNotHeld);
  EXPECT_GE(IdleMs(a.stream_id), 250) << "another worker renewed it";
  auto right = RenewBinding(redis_.get(), Ref("w1", a.stream_id, "s1/0", 0));
  ASSERT_TRUE(right.ok());
  EXPECT_EQ(*right, Binding::kBound);
  EXPECT_LT(IdleMs(a.stream_id), 250);
  // The delivery count is unchanged by renewals.
  auto p = redis_->Command({"XPENDING", queue_->StreamKey("sd15"), JobQueue::kGroup, a.stream_id, a.stream_id, "1"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->array()[0].array()[3].AsInt().value_or(-1), 1);
}

TEST_F(JobBindingTest, RedeliversOwnPendingDeliveriesNotYetHanded) {
  const QueuedJob a = Delivered(0, "w1");
  const QueuedJob b = Delivered(1, "w1");
  Delivered(2, "w2");
  std::set<std::string> pending;
  bool complete = false;
  // Handed already: a is skipped, b comes back with its count incremented.
  auto again = RedeliverOwn(redis_.get(), queue_->StreamKey("sd15"), "w1", {a.stream_id}, &pending, &complete);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(again->has_value());
  EXPECT_EQ((*again)->stream_id, b.stream_id);
  EXPECT_EQ((*again)->job_id, "s1/1");
  EXPECT_EQ((*again)->payload, "{}");
  EXPECT_EQ((*again)->deliveries, 2);
  EXPECT_TRUE(complete);
  EXPECT_EQ(pending, (std::set<std::string>{a.stream_id, b.stream_id}));
  // Both handed: nothing; another worker's is never handed out.
  again = RedeliverOwn(redis_.get(), queue_->StreamKey("sd15"), "w1", {a.stream_id, b.stream_id}, &pending, &complete);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->has_value());
  again = RedeliverOwn(redis_.get(), queue_->StreamKey("sd15"), "w3", {}, &pending, &complete);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->has_value());
  EXPECT_TRUE(pending.empty());
}

}  // namespace
}  // namespace sdfarm::coordinator
