#include "tests/farm/hostile_worker.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"

namespace sdfarm::testing {

namespace pb = sdfarm::v1;

absl::StatusOr<std::unique_ptr<HostileWorker>> HostileWorker::Register(Farm* farm, const std::string& worker_id,
                                                                       const std::string& model,
                                                                       const std::string& model_hash) {
  auto w = std::unique_ptr<HostileWorker>(new HostileWorker(farm, worker_id, model));
  w->stub_ = pb::WorkerService::NewStub(farm->channel());
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->worker_token(), absl::Seconds(20));
  pb::RegisterRequest req;
  req.set_worker_id(worker_id);
  req.mutable_info()->set_host("hostile");
  req.mutable_info()->set_model(model);
  req.mutable_info()->set_model_hash(model_hash);
  req.mutable_info()->set_batch_size(4);
  pb::RegisterResponse resp;
  if (grpc::Status s = w->stub_->Register(&ctx, req, &resp); !s.ok()) return FromGrpc(s);
  auto redis = RedisClient::Connect(farm->redis()->client_options());
  if (!redis.ok()) return redis.status();
  w->redis_ = std::move(*redis);
  return w;
}

absl::StatusOr<coordinator::QueuedJob> HostileWorker::ClaimJob(absl::Duration timeout) {
  coordinator::JobQueue q(redis_.get());
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto job = q.Claim(model_, id_, absl::Milliseconds(500));
    if (!job.ok()) return job.status();
    if (job->has_value()) return **job;
  }
  return absl::DeadlineExceededError("no job of model " + model_ + " to claim");
}

pb::JobReport HostileWorker::Envelope(const coordinator::QueuedJob& job) const {
  pb::JobReport m;
  m.set_worker_id(id_);
  m.set_job_id(job.job_id);
  m.set_job_stream_id(job.stream_id);
  return m;
}

pb::JobReport HostileWorker::Image(const coordinator::QueuedJob& job, int64_t item_index, std::string png) const {
  pb::JobReport m = Envelope(job);
  m.mutable_image()->set_item_index(item_index);
  m.mutable_image()->set_png(std::move(png));
  m.mutable_image()->set_render_seconds(0.1);
  return m;
}

ReportResult HostileWorker::Report(const std::vector<pb::JobReport>& messages, absl::Duration timeout) {
  ReportResult r;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm_->worker_token(), timeout);
  auto writer = stub_->ReportJob(&ctx, &r.ack);
  for (const pb::JobReport& m : messages) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  r.status = writer->Finish();
  return r;
}

ReportResult HostileWorker::ReportThenIdle(const std::vector<pb::JobReport>& messages, absl::Duration timeout) {
  ReportResult r;
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm_->worker_token(), timeout);
  auto writer = stub_->ReportJob(&ctx, &r.ack);
  for (const pb::JobReport& m : messages) {
    if (!writer->Write(m)) break;
  }
  r.status = writer->Finish();
  return r;
}

double ProcessCpuSeconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  // Fields after the command name (which may hold spaces) start at ") ".
  const size_t close = text.rfind(") ");
  if (close == std::string::npos) return -1;
  std::vector<std::string> f = absl::StrSplit(text.substr(close + 2), ' ');
  // state is field 3 of the whole line, utime 14, stime 15: here 0, 11, 12.
  if (f.size() < 13) return -1;
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  return (std::stod(f[11]) + std::stod(f[12])) / ticks;
}

}  // namespace sdfarm::testing
