// The job queue's specification (queue/job_queue.h), run against both
// implementations: RedisJobQueue on a real redis-server, MemoryJobQueue on a
// FakeClock. Time passes only when a test says so: on the fake clock by
// Advance(), in Redis by setting every pending delivery's idle time forward
// by the same amount (XCLAIM to its own owner with IDLE and JUSTID, which
// keeps owner and delivery count). Leases are 60 s, so the real time a test
// takes never matters.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/redis_client.h"
#include "queue/job_queue.h"
#include "queue/keys.h"
#include "queue/memory_job_queue.h"
#include "queue/redis_job_queue.h"
#include "tests/common/redis_server_fixture.h"

namespace sdfarm::queue {
namespace {

using ::sdfarm::testing::RedisServer;

constexpr absl::Duration kLease = absl::Seconds(60);

}  // namespace

// Readable outcomes in failure messages.
void PrintTo(Binding b, std::ostream* os) {
  static const char* const kNames[] = {"kBound", "kGone", "kNotHeld", "kMismatch"};
  *os << kNames[static_cast<int>(b)];
}
void PrintTo(FinishOutcome o, std::ostream* os) {
  static const char* const kNames[] = {"kFinished", "kGone", "kNotHeld", "kMismatch"};
  *os << kNames[static_cast<int>(o)];
}
void PrintTo(FailOutcome o, std::ostream* os) {
  static const char* const kNames[] = {"kReleased", "kDeadLettered", "kGone", "kNotHeld", "kMismatch"};
  *os << kNames[static_cast<int>(o)];
}

namespace {

// One implementation, with the few things a test does from outside the
// queue: create a sweep's state (the sweep store does that), let lease time
// pass, delete a stream entry by hand.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual JobQueue& queue() = 0;
  virtual void PutSweep(const SweepRef& sweep, const SweepCursor& cursor) = 0;
  virtual void Advance(absl::Duration d) = 0;
  virtual void DeleteEntry(const std::string& model, const std::string& stream_id) = 0;
};

class MemoryBackend final : public Backend {
 public:
  JobQueue& queue() override { return queue_; }
  void PutSweep(const SweepRef& sweep, const SweepCursor& cursor) override { queue_.PutSweep(sweep, cursor); }
  void Advance(absl::Duration d) override { clock_.Advance(d); }
  void DeleteEntry(const std::string& model, const std::string& stream_id) override {
    EXPECT_TRUE(queue_.DeleteEntry(model, stream_id));
  }

 private:
  FakeClock clock_;
  MemoryJobQueue queue_{clock_};
};

class RedisBackend final : public Backend {
 public:
  static std::unique_ptr<Backend> Start() {
    auto server = RedisServer::Start();
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    auto admin = RedisClient::Connect((*server)->client_options());
    EXPECT_TRUE(admin.ok()) << admin.status();
    if (!admin.ok()) return nullptr;
    auto b = std::unique_ptr<RedisBackend>(new RedisBackend(std::move(*server), std::move(*admin)));
    return b;
  }

  JobQueue& queue() override { return *queue_; }

  // What the sweep store's create and adopt scripts write.
  void PutSweep(const SweepRef& sweep, const SweepCursor& cursor) override {
    models_.insert(sweep.model);
    Run({"DEL", keys_.Sweep(sweep.id), keys_.InFlight(sweep.id), keys_.Failures(sweep.id),
         keys_.FailedItems(sweep.id)});
    Run({"HSET", keys_.Sweep(sweep.id), "spec", "{}", "model", sweep.model, "state", SweepStateName(cursor.state),
         "next_job", absl::StrCat(cursor.next_job), "jobs_done", absl::StrCat(cursor.jobs_done)});
  }

  void Advance(absl::Duration d) override {
    for (const std::string& model : models_) {
      const std::string stream = keys_.Stream(model);
      auto pending = admin_->Command({"XPENDING", stream, kGroup, "-", "+", "1000"});
      if (!pending.ok()) continue;  // no group yet: nothing pending
      for (const RedisReply& p : pending->array()) {
        const auto& f = p.array();
        ASSERT_EQ(f.size(), 4u);
        const int64_t idle = f[2].AsInt().value_or(0) + absl::ToInt64Milliseconds(d);
        Run({"XCLAIM", stream, kGroup, f[1].str(), "0", f[0].str(), "IDLE", absl::StrCat(idle), "JUSTID"});
      }
    }
  }

  void DeleteEntry(const std::string& model, const std::string& stream_id) override {
    auto r = admin_->Command({"XDEL", keys_.Stream(model), stream_id});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->AsInt().value_or(0), 1);
  }

 private:
  RedisBackend(std::unique_ptr<RedisServer> server, std::unique_ptr<RedisClient> admin)
      : server_(std::move(server)), admin_(std::move(admin)) {
    RedisJobQueueOptions o;
    o.redis = server_->client_options();
    o.key_prefix = "test";
    queue_ = std::make_unique<RedisJobQueue>(std::move(o));
  }

  void Run(const std::vector<std::string>& argv) {
    auto r = admin_->Command(argv);
    ASSERT_TRUE(r.ok()) << argv[0] << ": " << r.status();
  }

  std::unique_ptr<RedisServer> server_;
  std::unique_ptr<RedisClient> admin_;
  std::unique_ptr<RedisJobQueue> queue_;
  KeySchema keys_{"test"};
  std::set<std::string> models_;
};

class JobQueueConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "redis") {
      backend_ = RedisBackend::Start();
    } else {
      backend_ = std::make_unique<MemoryBackend>();
    }
    ASSERT_NE(backend_, nullptr);
    backend_->PutSweep(s1_, {});
  }

  JobQueue& q() { return backend_->queue(); }

  static std::string JobId(const SweepRef& s, int64_t index) { return absl::StrCat(s.id, "/", index); }
  static std::string Payload(const SweepRef& s, int64_t index) { return absl::StrCat("{\"job\":\"", JobId(s, index), "\"}"); }

  // Enqueues the sweep's next `n` jobs; their stream ids.
  std::vector<std::string> EnqueueJobs(const SweepRef& s, int64_t first, int n) {
    std::vector<std::string> ids;
    for (int64_t i = first; i < first + n; ++i) {
      auto e = q().Enqueue(s, i, JobId(s, i), Payload(s, i));
      EXPECT_TRUE(e.ok()) << e.status();
      EXPECT_EQ(e.ok() ? e->outcome : EnqueueOutcome::kRefused, EnqueueOutcome::kEnqueued) << "job " << i;
      ids.push_back(e.ok() ? e->stream_id : "");
    }
    return ids;
  }

  std::optional<Delivery> ClaimNew(const std::string& worker, const std::string& model = "sd15") {
    auto d = q().ClaimNew(model, worker);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : std::nullopt;
  }
  std::optional<Delivery> Reclaim(const std::string& worker) {
    auto d = q().ReclaimExpired("sd15", worker, kLease);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : std::nullopt;
  }
  ClaimResult Claim(const std::string& worker, std::set<std::string> handed = {},
                    std::vector<std::string> hold_back = {}) {
    ClaimRequest r;
    r.model = "sd15";
    r.worker = worker;
    r.lease = kLease;
    r.handed = std::move(handed);
    r.hold_back = std::move(hold_back);
    auto c = q().Claim(r);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : ClaimResult{};
  }

  // What `worker` holds, as it would name it: job `index` of s1 under `stream_id`.
  HeldJob Held(const std::string& worker, const std::string& stream_id, int64_t index) {
    return HeldJob{s1_, worker, stream_id, JobId(s1_, index), index};
  }
  HeldJob Held(const std::string& worker, const Delivery& d, int64_t index) { return Held(worker, d.stream_id, index); }

  Binding Check(const HeldJob& h) {
    auto b = q().Check(h);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *b : Binding::kGone;
  }
  Binding Renew(const HeldJob& h) {
    auto b = q().Renew(h);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *b : Binding::kGone;
  }
  FinishResult Finish(const HeldJob& h) {
    auto f = q().Finish(h);
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? *f : FinishResult{};
  }
  FailResult Fail(const HeldJob& h, bool retryable = true, std::vector<int64_t> items = {}) {
    FailRequest r;
    r.max_attempts = 3;
    r.release_idle = kLease + absl::Seconds(1);
    r.retryable = retryable;
    r.error = "CUDA OOM";
    r.payload = Payload(h.sweep, h.job_index);
    r.failed_items = std::move(items);
    auto f = q().Fail(h, r);
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? *f : FailResult{};
  }
  QueueDepth Depth(const std::string& model = "sd15") {
    auto d = q().Depth(model);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : QueueDepth{-1, -1};
  }
  SweepCursor Cursor(const SweepRef& s) {
    auto c = q().Cursor(s);
    EXPECT_TRUE(c.ok() && c->has_value()) << (c.ok() ? "no state" : c.status().ToString());
    return c.ok() && c->has_value() ? **c : SweepCursor{SweepState::kDone, -1, -1};
  }
  std::map<int64_t, std::string> InFlight(const SweepRef& s) {
    auto m = q().InFlight(s);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : std::map<int64_t, std::string>{};
  }
  std::vector<LostJob> FindLost(const SweepRef& s) {
    auto l = q().FindLost(s, kLease);
    EXPECT_TRUE(l.ok()) << l.status();
    return l.ok() ? *l : std::vector<LostJob>{};
  }
  std::optional<std::string> Requeue(const LostJob& lost) {
    auto r = q().Requeue(s1_, lost, JobId(s1_, lost.job_index), Payload(s1_, lost.job_index), kLease);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::nullopt;
  }
  std::vector<DeadLetter> DeadLetters() {
    auto d = q().DeadLetters("sd15", 100);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : std::vector<DeadLetter>{};
  }

  std::unique_ptr<Backend> backend_;
  const SweepRef s1_{"s1", "sd15"};
};

std::vector<int64_t> Indexes(const std::vector<LostJob>& lost) {
  std::vector<int64_t> out;
  for (const LostJob& l : lost) out.push_back(l.job_index);
  return out;
}

TEST_P(JobQueueConformance, EnqueuedJobsAreClaimedOldestFirstOncePerWorker) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 3);
  EXPECT_LT(ids[0], ids[1]);
  EXPECT_EQ(Cursor(s1_).next_job, 3);
  EXPECT_EQ(InFlight(s1_), (std::map<int64_t, std::string>{{0, ids[0]}, {1, ids[1]}, {2, ids[2]}}));

  std::optional<Delivery> a = ClaimNew("w1");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->stream_id, ids[0]);
  EXPECT_EQ(a->job_id, "s1/0");
  EXPECT_EQ(a->payload, Payload(s1_, 0));
  EXPECT_EQ(a->deliveries, 1);
  EXPECT_EQ(a->owner, "w1");
  EXPECT_EQ(a->model, "sd15");
  std::optional<Delivery> b = ClaimNew("w2");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->stream_id, ids[1]);
  const QueueDepth d = Depth();
  EXPECT_EQ(d.length, 3);
  EXPECT_EQ(d.pending, 2);
  EXPECT_EQ(d.waiting(), 1);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  EXPECT_FALSE(ClaimNew("w1").has_value());  // nothing new left; never waits
}

TEST_P(JobQueueConformance, EnqueueIsRefusedUnlessTheSweepRunsAtThatJob) {
  auto wrong = q().Enqueue(s1_, 1, "s1/1", "{}");  // next_job is 0
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_EQ(wrong->outcome, EnqueueOutcome::kRefused);
  const SweepRef gone{"nosuch", "sd15"};
  auto no_state = q().Enqueue(gone, 0, "nosuch/0", "{}");
  ASSERT_TRUE(no_state.ok());
  EXPECT_EQ(no_state->outcome, EnqueueOutcome::kRefused);
  const SweepRef paused{"p1", "sd15"};
  backend_->PutSweep(paused, {SweepState::kPaused, 0, 0});
  auto p = q().Enqueue(paused, 0, "p1/0", "{}");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->outcome, EnqueueOutcome::kRefused);
  EXPECT_EQ(Depth().length, 0);
  EXPECT_EQ(Cursor(s1_).next_job, 0);
  EXPECT_TRUE(InFlight(s1_).empty());
}

TEST_P(JobQueueConformance, SkipRecordedMovesTheCursorAndCountsTheJobsDone) {
  auto wrong = q().SkipRecorded(s1_, 2, 5);
  ASSERT_TRUE(wrong.ok());
  EXPECT_FALSE(wrong->has_value());
  auto skipped = q().SkipRecorded(s1_, 0, 4);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  EXPECT_EQ(*skipped, std::optional<int64_t>(4));
  EXPECT_EQ(Cursor(s1_).next_job, 4);
  EXPECT_EQ(Cursor(s1_).jobs_done, 4);
  EXPECT_EQ(Depth().length, 0);
  EnqueueJobs(s1_, 4, 1);
  EXPECT_EQ(InFlight(s1_).count(4), 1u);
}

TEST_P(JobQueueConformance, ClaimHandsOwnEarlierDeliveriesFirstThenExpiredLeasesThenNewJobs) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 4);
  ASSERT_TRUE(ClaimNew("w1").has_value());  // job 0: w1 restarts and forgets it
  ASSERT_TRUE(ClaimNew("w2").has_value());  // job 1: w2 dies
  backend_->Advance(kLease);                // both leases run out

  ClaimResult own = Claim("w1");
  ASSERT_TRUE(own.delivery.has_value());
  EXPECT_EQ(own.source, ClaimSource::kOwn);
  EXPECT_EQ(own.delivery->stream_id, ids[0]);
  EXPECT_EQ(own.delivery->deliveries, 2);
  ASSERT_TRUE(own.own_pending.has_value());
  EXPECT_EQ(*own.own_pending, std::set<std::string>{ids[0]});

  ClaimResult expired = Claim("w1", {ids[0]});
  ASSERT_TRUE(expired.delivery.has_value());
  EXPECT_EQ(expired.source, ClaimSource::kExpired);
  EXPECT_EQ(expired.delivery->stream_id, ids[1]);
  EXPECT_EQ(expired.delivery->job_id, "s1/1");
  EXPECT_EQ(expired.delivery->deliveries, 2);
  EXPECT_EQ(Check(Held("w2", ids[1], 1)), Binding::kNotHeld);
  EXPECT_EQ(Check(Held("w1", ids[1], 1)), Binding::kBound);

  ClaimResult fresh = Claim("w1", {ids[0], ids[1]});
  ASSERT_TRUE(fresh.delivery.has_value());
  EXPECT_EQ(fresh.source, ClaimSource::kNew);
  EXPECT_EQ(fresh.delivery->stream_id, ids[2]);
  EXPECT_EQ(fresh.delivery->deliveries, 1);
  EXPECT_EQ(*fresh.own_pending, (std::set<std::string>{ids[0], ids[1]}));
}

TEST_P(JobQueueConformance, AnExpiredLeaseIsReclaimedWithItsDeliveryCounted) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 1);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  EXPECT_FALSE(Reclaim("w2").has_value());
  backend_->Advance(kLease - absl::Seconds(1));
  EXPECT_FALSE(Reclaim("w2").has_value());
  backend_->Advance(absl::Seconds(1));
  std::optional<Delivery> taken = Reclaim("w2");
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->stream_id, ids[0]);
  EXPECT_EQ(taken->owner, "w2");
  EXPECT_EQ(taken->deliveries, 2);
  // The worker that lost it can neither renew nor finish it.
  EXPECT_EQ(Renew(Held("w1", ids[0], 0)), Binding::kNotHeld);
  EXPECT_EQ(Finish(Held("w1", ids[0], 0)).outcome, FinishOutcome::kNotHeld);
  EXPECT_EQ(InFlight(s1_).count(0), 1u);
  EXPECT_EQ(Depth().pending, 1);
  backend_->Advance(kLease);
  std::optional<Delivery> again = Reclaim("w3");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->deliveries, 3);
}

TEST_P(JobQueueConformance, OnlyTheOwnerRenewsAndARenewalKeepsTheLease) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 2);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  ASSERT_TRUE(ClaimNew("w1").has_value());
  backend_->Advance(kLease / 2);
  EXPECT_EQ(Renew(Held("w1", ids[0], 0)), Binding::kBound);
  EXPECT_EQ(Renew(Held("w2", ids[0], 0)), Binding::kNotHeld);
  EXPECT_EQ(Renew(HeldJob{s1_, "w1", ids[0], "s1/1", 0}), Binding::kMismatch);  // names another job
  EXPECT_EQ(Renew(HeldJob{s1_, "w1", ids[0], "s1/0", 1}), Binding::kMismatch);  // job 1 is in flight elsewhere
  backend_->Advance(kLease / 2 + absl::Seconds(1));
  // Job 0 was renewed half a lease ago; job 1 was not, and is the one reclaimed.
  std::optional<Delivery> taken = Reclaim("w2");
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->stream_id, ids[1]);
  EXPECT_FALSE(Reclaim("w2").has_value());
  EXPECT_EQ(Renew(Held("w1", ids[1], 1)), Binding::kNotHeld);
  ASSERT_EQ(Finish(Held("w1", ids[0], 0)).outcome, FinishOutcome::kFinished);
  EXPECT_EQ(Renew(Held("w1", ids[0], 0)), Binding::kGone);
}

TEST_P(JobQueueConformance, FinishIsBoundToOwnerJobAndInFlightRecordAndIdempotent) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 2);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  ASSERT_TRUE(ClaimNew("w1").has_value());
  // Delivery 0 reported as job 1, and delivery 0 as job 0 under job 1's index: refused, nothing changed.
  EXPECT_EQ(Finish(HeldJob{s1_, "w1", ids[0], "s1/1", 1}).outcome, FinishOutcome::kMismatch);
  EXPECT_EQ(Finish(HeldJob{s1_, "w1", ids[0], "s1/0", 1}).outcome, FinishOutcome::kMismatch);
  EXPECT_EQ(Finish(Held("w2", ids[0], 0)).outcome, FinishOutcome::kNotHeld);
  EXPECT_EQ(Depth().pending, 2);
  EXPECT_EQ(InFlight(s1_).size(), 2u);
  EXPECT_EQ(Cursor(s1_).jobs_done, 0);

  FinishResult f = Finish(Held("w1", ids[0], 0));
  EXPECT_EQ(f.outcome, FinishOutcome::kFinished);
  EXPECT_EQ(f.jobs_done, 1);
  FinishResult again = Finish(Held("w1", ids[0], 0));  // a report sent again
  EXPECT_EQ(again.outcome, FinishOutcome::kGone);
  EXPECT_EQ(again.jobs_done, 1);
  EXPECT_EQ(Cursor(s1_).jobs_done, 1);
  EXPECT_EQ(InFlight(s1_), (std::map<int64_t, std::string>{{1, ids[1]}}));
  EXPECT_EQ(Depth().length, 1);
  EXPECT_EQ(Depth().pending, 1);
}

TEST_P(JobQueueConformance, AFailureIsRetriedElsewhereThenDeadLetteredAtMaxAttempts) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 2);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  // A mismatched failure counts nothing.
  EXPECT_EQ(Fail(HeldJob{s1_, "w1", ids[0], "s1/1", 0}).outcome, FailOutcome::kMismatch);

  FailResult first = Fail(Held("w1", ids[0], 0));
  EXPECT_EQ(first.outcome, FailOutcome::kReleased);
  EXPECT_EQ(first.attempt, 1);
  EXPECT_EQ(Check(Held("w1", ids[0], 0)), Binding::kNotHeld);  // released: still in flight, not w1's
  auto waiting = q().AwaitingReclaim("sd15", ids[0], kLease);
  ASSERT_TRUE(waiting.ok());
  EXPECT_TRUE(*waiting);  // reclaimable at once
  // The failing worker takes a new job rather than its own failure back ...
  ClaimResult held_back = Claim("w1", {ids[0]}, {ids[0]});
  ASSERT_TRUE(held_back.delivery.has_value());
  EXPECT_EQ(held_back.source, ClaimSource::kNew);
  EXPECT_EQ(held_back.delivery->stream_id, ids[1]);
  EXPECT_TRUE(held_back.settled.empty());
  // ... while another worker reclaims it.
  ClaimResult retry = Claim("w2");
  ASSERT_TRUE(retry.delivery.has_value());
  EXPECT_EQ(retry.source, ClaimSource::kExpired);
  EXPECT_EQ(retry.delivery->stream_id, ids[0]);
  EXPECT_EQ(retry.delivery->deliveries, 2);
  EXPECT_EQ(Claim("w1", {ids[0], ids[1]}, {ids[0]}).settled, std::vector<std::string>{ids[0]});

  FailResult second = Fail(Held("w2", ids[0], 0));
  EXPECT_EQ(second.outcome, FailOutcome::kReleased);
  EXPECT_EQ(second.attempt, 2);
  std::optional<Delivery> third_try = Reclaim("w3");
  ASSERT_TRUE(third_try.has_value());
  EXPECT_EQ(third_try->deliveries, 3);
  FailResult last = Fail(Held("w3", ids[0], 0), true, {0, 1, 2});
  EXPECT_EQ(last.outcome, FailOutcome::kDeadLettered);
  EXPECT_EQ(last.jobs_done, 1);

  std::vector<DeadLetter> dead = DeadLetters();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].job_id, "s1/0");
  EXPECT_EQ(dead[0].stream_id, ids[0]);
  EXPECT_EQ(dead[0].payload, Payload(s1_, 0));
  EXPECT_EQ(dead[0].deliveries, 3);
  EXPECT_EQ(dead[0].error, "CUDA OOM");
  EXPECT_FALSE(dead[0].dead_id.empty());
  auto failed = q().FailedItems(s1_);
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(*failed, (std::map<int64_t, std::string>{{0, "CUDA OOM"}, {1, "CUDA OOM"}, {2, "CUDA OOM"}}));
  EXPECT_EQ(InFlight(s1_).count(0), 0u);
  EXPECT_EQ(Cursor(s1_).jobs_done, 1);

  // Dead-lettering again (a resent report) records nothing more.
  EXPECT_EQ(Fail(Held("w3", ids[0], 0)).outcome, FailOutcome::kGone);
  EXPECT_EQ(DeadLetters().size(), 1u);
  EXPECT_EQ(Cursor(s1_).jobs_done, 1);
}

TEST_P(JobQueueConformance, ANonRetryableFailureIsDeadLetteredAtOnce) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 1);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  FailResult f = Fail(Held("w1", ids[0], 0), false, {0});
  EXPECT_EQ(f.outcome, FailOutcome::kDeadLettered);
  EXPECT_EQ(f.jobs_done, 1);
  ASSERT_EQ(DeadLetters().size(), 1u);
  EXPECT_EQ(DeadLetters()[0].deliveries, 1);
  EXPECT_EQ(Depth().length, 0);
  EXPECT_EQ(Depth().pending, 0);
}

TEST_P(JobQueueConformance, CancelTakesEveryJobOfTheSweepOut) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 3);
  const SweepRef other{"s2", "sd15"};
  backend_->PutSweep(other, {});
  const std::vector<std::string> other_ids = EnqueueJobs(other, 0, 1);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  auto removed = q().Cancel(s1_);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, 3);
  EXPECT_EQ(Cursor(s1_).state, SweepState::kCancelled);
  EXPECT_TRUE(InFlight(s1_).empty());
  EXPECT_EQ(Depth().length, 1);  // the other sweep's job
  EXPECT_EQ(Depth().pending, 0);
  EXPECT_EQ(Finish(Held("w1", ids[0], 0)).outcome, FinishOutcome::kGone);
  auto refused = q().Enqueue(s1_, 3, "s1/3", "{}");
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(refused->outcome, EnqueueOutcome::kRefused);
  std::optional<Delivery> next = ClaimNew("w1");
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->stream_id, other_ids[0]);
}

TEST_P(JobQueueConformance, PauseTakesWaitingJobsOutAndResumeBringsThemBackThroughRequeue) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 3);
  std::optional<Delivery> delivered = ClaimNew("w1");
  ASSERT_TRUE(delivered.has_value());
  auto removed = q().Pause(s1_, PauseScope::kWaiting);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, 2);
  EXPECT_EQ(Cursor(s1_).state, SweepState::kPaused);
  EXPECT_EQ(InFlight(s1_).size(), 3u);  // still in flight: they come back on resume
  EXPECT_EQ(Depth().length, 1);
  EXPECT_FALSE(ClaimNew("w2").has_value());
  EXPECT_EQ(Indexes(FindLost(s1_)), (std::vector<int64_t>{1, 2}));
  EXPECT_FALSE(Requeue({1, ids[1]}).has_value());  // not while paused

  auto resumed = q().Resume(s1_);
  ASSERT_TRUE(resumed.ok());
  EXPECT_TRUE(*resumed);
  EXPECT_EQ(Cursor(s1_).state, SweepState::kRunning);
  for (const LostJob& lost : FindLost(s1_)) {
    std::optional<std::string> id = Requeue(lost);
    ASSERT_TRUE(id.has_value());
    EXPECT_EQ(InFlight(s1_)[lost.job_index], *id);
  }
  std::optional<Delivery> back = ClaimNew("w2");
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->job_id, "s1/1");
  EXPECT_EQ(Finish(Held("w1", *delivered, 0)).outcome, FinishOutcome::kFinished);  // delivered jobs finish
}

TEST_P(JobQueueConformance, PauseAllTakesDeliveredJobsOutToo) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 2);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  auto removed = q().Pause(s1_, PauseScope::kAll);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, 2);
  EXPECT_EQ(Depth().length, 0);
  EXPECT_EQ(Depth().pending, 0);
  // Still the sweep's in-flight delivery, no longer anybody's.
  EXPECT_EQ(Check(Held("w1", ids[0], 0)), Binding::kNotHeld);
  EXPECT_EQ(Indexes(FindLost(s1_)), (std::vector<int64_t>{0, 1}));
}

TEST_P(JobQueueConformance, ResumeOfASweepWhoseStateIsGoneChangesNothing) {
  const SweepRef gone{"gone", "sd15"};
  auto resumed = q().Resume(gone);
  ASSERT_TRUE(resumed.ok());
  EXPECT_FALSE(*resumed);
  auto cursor = q().Cursor(gone);
  ASSERT_TRUE(cursor.ok());
  EXPECT_FALSE(cursor->has_value());
}

TEST_P(JobQueueConformance, AJobWhoseEntryWasDeletedIsFoundLostAndRequeuedOnce) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 2);
  ASSERT_TRUE(ClaimNew("w1").has_value());  // job 0 delivered, job 1 waiting
  backend_->DeleteEntry("sd15", ids[0]);
  backend_->DeleteEntry("sd15", ids[1]);
  // Job 1 was never delivered: lost. Job 0's worker may still finish it within its lease.
  std::vector<LostJob> lost = FindLost(s1_);
  ASSERT_EQ(Indexes(lost), std::vector<int64_t>{1});
  EXPECT_EQ(lost[0].stream_id, ids[1]);
  EXPECT_FALSE(Requeue({0, ids[0]}).has_value());
  backend_->Advance(kLease);
  lost = FindLost(s1_);
  ASSERT_EQ(Indexes(lost), (std::vector<int64_t>{0, 1}));
  std::set<std::string> requeued;
  for (const LostJob& l : lost) {
    std::optional<std::string> id = Requeue(l);
    ASSERT_TRUE(id.has_value());
    EXPECT_NE(*id, l.stream_id);
    requeued.insert(*id);
  }
  EXPECT_FALSE(Requeue(lost[0]).has_value());  // the record names the new delivery now
  EXPECT_TRUE(FindLost(s1_).empty());
  EXPECT_EQ(Check(Held("w1", ids[0], 0)), Binding::kGone);
  std::optional<Delivery> a = ClaimNew("w2");
  std::optional<Delivery> b = ClaimNew("w2");
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_EQ((std::set<std::string>{a->stream_id, b->stream_id}), requeued);
  EXPECT_EQ(a->deliveries, 1);
}

TEST_P(JobQueueConformance, HoldForStorageTakesTheDeliveryOutButKeepsItInFlight) {
  const std::vector<std::string> ids = EnqueueJobs(s1_, 0, 1);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  auto other = q().HoldForStorage("sd15", "w2", ids[0]);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(*other, HoldOutcome::kOtherOwner);
  auto held = q().HoldForStorage("sd15", "w1", ids[0]);
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(*held, HoldOutcome::kTakenOut);
  auto again = q().HoldForStorage("sd15", "w1", ids[0]);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, HoldOutcome::kNotPending);
  EXPECT_EQ(Depth().length, 0);
  EXPECT_EQ(Depth().pending, 0);
  EXPECT_EQ(InFlight(s1_), (std::map<int64_t, std::string>{{0, ids[0]}}));
  std::vector<LostJob> lost = FindLost(s1_);
  ASSERT_EQ(Indexes(lost), std::vector<int64_t>{0});
  ASSERT_TRUE(Requeue(lost[0]).has_value());
  std::optional<Delivery> later = ClaimNew("w2");
  ASSERT_TRUE(later.has_value());
  EXPECT_EQ(later->job_id, "s1/0");
}

TEST_P(JobQueueConformance, RemoveSweepForgetsItsJobsAndState) {
  EnqueueJobs(s1_, 0, 2);
  ASSERT_TRUE(ClaimNew("w1").has_value());
  auto removed = q().RemoveSweep(s1_, "fox-study", "req-1");
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_TRUE(*removed);
  auto cursor = q().Cursor(s1_);
  ASSERT_TRUE(cursor.ok());
  EXPECT_FALSE(cursor->has_value());
  EXPECT_TRUE(InFlight(s1_).empty());
  EXPECT_EQ(Depth().length, 0);
  EXPECT_EQ(Depth().pending, 0);
  auto again = q().RemoveSweep(s1_, "fox-study", "req-1");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
}

TEST_P(JobQueueConformance, DepthIsPerModel) {
  const SweepRef xl{"x1", "sdxl"};
  backend_->PutSweep(xl, {});
  EnqueueJobs(s1_, 0, 3);
  EnqueueJobs(xl, 0, 1);
  ASSERT_TRUE(ClaimNew("w1", "sdxl").has_value());
  EXPECT_EQ(Depth("sd15").length, 3);
  EXPECT_EQ(Depth("sd15").pending, 0);
  EXPECT_EQ(Depth("sdxl").length, 1);
  EXPECT_EQ(Depth("sdxl").pending, 1);
  EXPECT_EQ(Depth("none").length, 0);
  EXPECT_FALSE(ClaimNew("w1", "sdxl").has_value());  // one model's worker sees only its stream
}

TEST_P(JobQueueConformance, ConcurrentClaimsHandEachJobToOneWorker) {
  constexpr int kJobs = 40;
  EnqueueJobs(s1_, 0, kJobs);
  absl::Mutex mu;
  std::vector<std::string> claimed;
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      while (true) {
        auto d = q().ClaimNew("sd15", absl::StrCat("w", w));
        if (!d.ok() || !d->has_value()) return;
        absl::MutexLock lock(&mu);
        claimed.push_back((*d)->stream_id);
      }
    });
  }
  for (std::thread& t : workers) t.join();
  EXPECT_EQ(claimed.size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(std::set<std::string>(claimed.begin(), claimed.end()).size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(Depth().pending, kJobs);
}

INSTANTIATE_TEST_SUITE_P(BothImplementations, JobQueueConformance, ::testing::Values("redis", "memory"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace sdfarm::queue
