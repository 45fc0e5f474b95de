#include "tests/farm/hostile_worker.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"

namespace sdfarm::testing {

namespace pb = ::sdfarm::v1;

HostileWorker::HostileWorker(std::shared_ptr<grpc::Channel> channel, std::string token)
    : stub_(pb::WorkerService::NewStub(std::move(channel))), token_(std::move(token)) {}

void HostileWorker::Prepare(grpc::ClientContext* ctx, const std::string& session, absl::Duration timeout) const {
  PrepareContext(ctx, token_, timeout);
  if (!session.empty()) ctx->AddMetadata(kSessionMetadataKey, session);
}

grpc::Status HostileWorker::Register(const std::string& worker_id, const std::string& model,
                                     const std::string& model_hash, pb::RegisterResponse* resp) {
  pb::RegisterRequest req;
  req.mutable_info()->set_model(model);
  req.mutable_info()->set_model_hash(model_hash);
  req.mutable_info()->set_host("mallory");
  req.set_worker_id(worker_id);
  grpc::ClientContext ctx;
  Prepare(&ctx, "", absl::Seconds(10));
  grpc::Status s = stub_->Register(&ctx, req, resp);
  if (s.ok()) session_ = resp->session();
  return s;
}

grpc::Status HostileWorker::Claim(pb::ClaimResponse* resp, const std::optional<std::string>& session,
                                  int64_t max_wait_ms) {
  pb::ClaimRequest req;
  req.set_max_wait_ms(max_wait_ms);
  grpc::ClientContext ctx;
  Prepare(&ctx, session.value_or(session_), absl::Milliseconds(max_wait_ms) + absl::Seconds(10));
  return stub_->Claim(&ctx, req, resp);
}

grpc::Status HostileWorker::Heartbeat(const pb::HeartbeatRequest& req, pb::HeartbeatResponse* resp) {
  grpc::ClientContext ctx;
  Prepare(&ctx, session_, absl::Seconds(10));
  return stub_->Heartbeat(&ctx, req, resp);
}

absl::StatusOr<pb::ClaimedJob> HostileWorker::ClaimJob(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    pb::ClaimResponse resp;
    const int64_t wait_ms = std::max<int64_t>(1, std::min<int64_t>(2000, absl::ToInt64Milliseconds(deadline - absl::Now())));
    grpc::Status s = Claim(&resp, std::nullopt, wait_ms);
    if (!s.ok()) return FromGrpc(s);
    if (resp.has_job()) return resp.job();
  }
  return absl::DeadlineExceededError("no job handed out within " + absl::FormatDuration(timeout));
}

grpc::Status HostileWorker::Report(const std::vector<pb::JobReport>& messages, pb::ReportAck* ack,
                                   absl::Duration timeout) {
  grpc::ClientContext ctx;
  Prepare(&ctx, session_, timeout);
  auto writer = stub_->ReportJob(&ctx, ack);
  for (const pb::JobReport& m : messages) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status HostileWorker::ReportThenIdle(const std::vector<pb::JobReport>& messages, pb::ReportAck* ack,
                                           absl::Duration timeout) {
  grpc::ClientContext ctx;
  Prepare(&ctx, session_, timeout);
  auto writer = stub_->ReportJob(&ctx, ack);
  for (const pb::JobReport& m : messages) {
    if (!writer->Write(m)) break;
  }
  return writer->Finish();
}

pb::JobReport HostileWorker::Envelope(const pb::ClaimedJob& job) {
  pb::JobReport m;
  m.set_job_id(job.job_id());
  m.set_job_stream_id(job.stream_id());
  return m;
}

pb::JobReport HostileWorker::Image(const pb::ClaimedJob& job, int64_t item_index, std::string png) {
  pb::JobReport m = Envelope(job);
  m.mutable_image()->set_item_index(item_index);
  m.mutable_image()->set_png(std::move(png));
  m.mutable_image()->set_render_seconds(0.1);
  return m;
}

std::string ForgedPng(const coordinator::Item& item, const std::string& model) {
  engine::Image white{item.width, item.height, 3,
                      std::vector<uint8_t>(static_cast<size_t>(item.width) * item.height * 3, 255)};
  auto png = engine::EncodePng(
      white, {{"parameters", absl::StrCat("forged prompt\nSteps: ", item.steps, ", Sampler: Euler a, CFG scale: ",
                                          engine::FormatNumber(item.guidance_scale), ", Seed: ", item.seed,
                                          ", Size: ", item.width, "x", item.height, ", Model: ", model)}});
  return png.ok() ? *png : "";
}

std::vector<pb::JobReport> ForgedReport(const std::string& stream_id, const std::string& job_id,
                                        const std::string& worker_id, const std::vector<coordinator::Item>& items,
                                        const std::string& model, const pb::JobReport& last) {
  std::vector<pb::JobReport> out;
  auto envelope = [&](pb::JobReport m) {
    if (!worker_id.empty()) m.set_worker_id(worker_id);
    m.set_job_stream_id(stream_id);
    m.set_job_id(job_id);
    return m;
  };
  for (const coordinator::Item& item : items) {
    pb::JobReport m;
    m.mutable_image()->set_item_index(item.index);
    m.mutable_image()->set_png(ForgedPng(item, model));
    out.push_back(envelope(std::move(m)));
  }
  out.push_back(envelope(last));
  return out;
}

pb::JobReport ForgedDone() {
  pb::JobReport m;
  m.mutable_done()->set_seconds(1);
  return m;
}

pb::JobReport ForgedFailure() {
  pb::JobReport m;
  m.mutable_failed()->set_error("forged: this job can never succeed");
  m.mutable_failed()->set_retryable(false);
  return m;
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
