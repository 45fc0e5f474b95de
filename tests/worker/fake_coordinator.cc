#include "tests/worker/fake_coordinator.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "common/status_macros.h"
#include "coordinator/job_queue.h"

namespace sdfarm::testing {

namespace v1 = ::sdfarm::v1;

absl::StatusOr<std::unique_ptr<FakeCoordinator>> FakeCoordinator::Start(Config config) {
  std::unique_ptr<FakeCoordinator> fake(new FakeCoordinator(std::move(config)));
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:" + std::to_string(fake->config_.port), grpc::InsecureServerCredentials(),
                           &fake->port_);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.RegisterService(fake.get());
  fake->server_ = builder.BuildAndStart();
  if (!fake->server_ || fake->port_ == 0) return absl::InternalError("fake coordinator: cannot listen");
  return fake;
}

FakeCoordinator::~FakeCoordinator() {
  // Like a crash: calls in flight are cancelled, not finished.
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
}

bool FakeCoordinator::WaitUntil(const std::function<bool()>& pred, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!pred()) {
    if (absl::Now() >= deadline) return false;
    absl::MutexLock lock(&mu_);
    changed_.WaitWithTimeout(&mu_, absl::Milliseconds(20));
  }
  return true;
}

std::vector<v1::RegisterRequest> FakeCoordinator::registrations() const {
  absl::MutexLock lock(&mu_);
  return registrations_;
}

std::vector<v1::HeartbeatRequest> FakeCoordinator::heartbeats() const {
  absl::MutexLock lock(&mu_);
  return heartbeats_;
}

std::vector<FakeCoordinator::Stream> FakeCoordinator::streams() const {
  absl::MutexLock lock(&mu_);
  return streams_;
}

std::vector<v1::JobReport> FakeCoordinator::FinalReports() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::JobReport> out;
  for (const Stream& s : streams_) {
    if (s.completed && !s.messages.empty()) out.push_back(s.messages.back());
  }
  return out;
}

int FakeCoordinator::steps_seen() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const Stream& s : streams_) {
    for (const auto& m : s.messages) n += m.has_step() ? 1 : 0;
  }
  return n;
}

void FakeCoordinator::BreakNextStreams(int n) {
  absl::MutexLock lock(&mu_);
  break_streams_ = n;
}

void FakeCoordinator::CancelJob(const std::string& stream_id) {
  absl::MutexLock lock(&mu_);
  cancelled_.insert(stream_id);
}

void FakeCoordinator::ForgetWorkers() {
  absl::MutexLock lock(&mu_);
  forgotten_ = true;
}

grpc::Status FakeCoordinator::CheckToken(const grpc::ServerContext& ctx) const {
  if (config_.token.empty()) return grpc::Status::OK;
  const std::string token = BearerToken(ctx);
  if (token.empty()) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no token");
  if (!ConstantTimeEquals(token, config_.token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
  }
  return grpc::Status::OK;
}

grpc::Status FakeCoordinator::CheckSession(const grpc::ServerContext& ctx, std::string* worker) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find(kSessionMetadataKey);
  const std::string session = it == md.end() ? "" : std::string(it->second.data(), it->second.size());
  absl::MutexLock lock(&mu_);
  if (forgotten_ || session.empty() || session != session_) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown session '" + session + "'; register again");
  }
  *worker = worker_id_;
  return grpc::Status::OK;
}

absl::StatusOr<std::unique_ptr<RedisClient>> FakeCoordinator::Redis() const {
  ASSIGN_OR_RETURN(RedisOptions options, ParseRedisUrl(config_.redis_url));
  return RedisClient::Connect(options);
}

std::string FakeCoordinator::Model() const {
  absl::MutexLock lock(&mu_);
  return registrations_.empty() ? config_.model : registrations_.back().info().model();
}

grpc::Status FakeCoordinator::Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req,
                                       v1::RegisterResponse* resp) {
  if (grpc::Status s = CheckToken(*ctx); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  worker_id_ = req->worker_id().empty() ? "assigned-1" : req->worker_id();
  session_ = absl::StrCat("fake-session-", registrations_.size() + 1);
  resp->set_worker_id(worker_id_);
  resp->set_session(session_);
  resp->set_lease_ms(config_.lease_ms);
  resp->set_max_attempts(config_.max_attempts);
  registrations_.push_back(*req);
  forgotten_ = false;
  changed_.SignalAll();
  return grpc::Status::OK;
}

grpc::Status FakeCoordinator::Claim(grpc::ServerContext* ctx, const v1::ClaimRequest* req,
                                    v1::ClaimResponse* resp) {
  if (grpc::Status s = CheckToken(*ctx); !s.ok()) return s;
  std::string worker;
  if (grpc::Status s = CheckSession(*ctx, &worker); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    ++claims_;
    changed_.SignalAll();
  }
  // As the coordinator: an expired job first, then a new one.
  auto redis = Redis();
  if (!redis.ok()) return ToGrpc(redis.status());
  coordinator::JobQueue queue(redis->get(), config_.key_prefix);
  const std::string model = Model();
  std::optional<coordinator::QueuedJob> job;
  auto reclaimed = queue.ReclaimExpired(model, worker, absl::Milliseconds(config_.lease_ms), 1);
  if (!reclaimed.ok()) return ToGrpc(reclaimed.status());
  if (!reclaimed->empty()) {
    job = reclaimed->front();
  } else {
    auto claimed = queue.Claim(model, worker, std::min(absl::Milliseconds(req->max_wait_ms()), absl::Seconds(2)));
    if (!claimed.ok()) return ToGrpc(claimed.status());
    job = *claimed;
  }
  if (job) {
    v1::ClaimedJob* out = resp->mutable_job();
    out->set_stream_id(job->stream_id);
    out->set_job_id(job->job_id);
    out->set_payload(job->payload);
    out->set_deliveries(job->deliveries);
  }
  return grpc::Status::OK;
}

grpc::Status FakeCoordinator::Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                                        v1::HeartbeatResponse* resp) {
  if (grpc::Status s = CheckToken(*ctx); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    heartbeats_.push_back(*req);
    changed_.SignalAll();
  }
  std::string worker;
  if (grpc::Status s = CheckSession(*ctx, &worker); !s.ok()) return s;
  std::unique_ptr<RedisClient> redis;
  for (const v1::HeldJob& job : req->jobs()) {
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_.count(job.stream_id()) > 0) {
        resp->add_cancelled_job_stream_ids(job.stream_id());
        continue;
      }
    }
    // As the coordinator: the heartbeat renews the leases it lists.
    if (!redis) {
      auto r = Redis();
      if (!r.ok()) return ToGrpc(r.status());
      redis = *std::move(r);
    }
    absl::Status renewed = coordinator::JobQueue(redis.get(), config_.key_prefix).Renew(Model(), worker, job.stream_id());
    if (renewed.code() == absl::StatusCode::kNotFound || renewed.code() == absl::StatusCode::kFailedPrecondition) {
      resp->add_lost_job_stream_ids(job.stream_id());
    }
  }
  return grpc::Status::OK;
}

int FakeCoordinator::claims() const {
  absl::MutexLock lock(&mu_);
  return claims_;
}

grpc::Status FakeCoordinator::ReportJob(grpc::ServerContext* ctx, grpc::ServerReader<v1::JobReport>* reader,
                                        v1::ReportAck* ack) {
  if (grpc::Status s = CheckToken(*ctx); !s.ok()) return s;
  std::string worker;
  if (grpc::Status s = CheckSession(*ctx, &worker); !s.ok()) return s;
  size_t index;
  bool break_this = false;
  {
    absl::MutexLock lock(&mu_);
    index = streams_.size();
    streams_.emplace_back();
    if (break_streams_ > 0) {
      --break_streams_;
      break_this = true;
    }
    changed_.SignalAll();
  }
  v1::JobReport m;
  while (reader->Read(&m)) {
    {
      absl::MutexLock lock(&mu_);
      streams_[index].messages.push_back(m);
      changed_.SignalAll();
    }
    if (break_this && m.has_image()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake coordinator restart");
    if (m.has_done() || m.has_failed()) {
      // As the coordinator: acknowledge the job only if the session's
      // worker owns it.
      auto redis = Redis();
      if (!redis.ok()) return ToGrpc(redis.status());
      coordinator::JobQueue queue(redis->get(), config_.key_prefix);
      auto owned = queue.AckIfOwner(Model(), worker, m.job_stream_id());
      if (!owned.ok()) return ToGrpc(owned.status());
      ack->set_accepted(*owned);
    }
  }
  absl::MutexLock lock(&mu_);
  streams_[index].completed = !streams_[index].messages.empty() &&
                              (streams_[index].messages.back().has_done() ||
                               streams_[index].messages.back().has_failed());
  changed_.SignalAll();
  return grpc::Status::OK;
}

}  // namespace sdfarm::testing
