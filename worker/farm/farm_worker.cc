#include "worker/farm/farm_worker.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/job_payload.h"
#include "common/log_time.h"
#include "common/status_macros.h"
#include "worker/engine/a1111_parameters.h"
#include "worker/engine/png_io.h"

namespace sdfarm::worker {
namespace {

namespace v1 = ::sdfarm::v1;

constexpr char kVersion[] = "sdfarm " SDFARM_VERSION;

// A LoRA or VAE a job names, in this worker's folder for them: the file
// <dir>/<name>.safetensors, else the diffusers folder <dir>/<name>/. Names
// were validated by the coordinator (no '/', no leading '.').
absl::StatusOr<std::string> FindNamedAsset(const std::string& dir, const char* flag, const char* what,
                                           const std::string& name) {
  if (dir.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the job asks for ", what, " '", name, "', but this worker has no ", flag));
  }
  std::error_code ec;
  const std::string file = dir + "/" + name + ".safetensors";
  if (std::filesystem::is_regular_file(file, ec)) return file;
  const std::string folder = dir + "/" + name;
  if (std::filesystem::is_directory(folder, ec)) return folder;
  return absl::NotFoundError(absl::StrCat(what, " '", name, "' is not in ", dir, " (looked for ", file, " and ",
                                          folder, "/)"));
}

// Resident set size from /proc/self/statm: the process's memory on a CPU
// worker. (The engine does not expose CUDA's allocator; on a GPU this is the
// host side only.)
int64_t ResidentBytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size_pages = 0, resident_pages = 0;
  if (!(f >> size_pages >> resident_pages)) return 0;
  return resident_pages * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// "model name" of /proc/cpuinfo, for the worker list.
std::string CpuName() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (absl::StartsWith(line, "model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "CPU";
}

int64_t MemTotalBytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  while (f >> key >> kib) {
    if (key == "MemTotal:") return kib * 1024;
    f.ignore(1 << 10, '\n');
  }
  return 0;
}

// Report failures that resending cannot fix: the coordinator refuses this
// worker or the message itself.
bool IsPermanent(absl::StatusCode code) {
  return code == absl::StatusCode::kUnauthenticated || code == absl::StatusCode::kPermissionDenied ||
         code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnimplemented;
}

std::string Seconds(double s) { return absl::StrFormat("%.2f s", s); }

}  // namespace

// The job being worked on, shared by the main thread (renders and reports
// it) and the keeper thread (renews its lease, lists it in heartbeats, stops
// it). Stop() is sticky and cancels the report stream in flight.
struct FarmWorker::ActiveJob {
  ActiveJob(std::string stream, std::string job) : stream_id(std::move(stream)), job_id(std::move(job)) {}

  void Stop(const std::string& why) {
    absl::MutexLock lock(&mu);
    if (stopped.load()) return;
    reason = why;
    stopped.store(true);
    if (call != nullptr) call->TryCancel();
  }
  std::string Reason() const {
    absl::MutexLock lock(&mu);
    return reason;
  }
  // Makes `ctx` cancellable by Stop(); false (and nothing attached) when the
  // job is stopped already.
  bool Attach(grpc::ClientContext* ctx) {
    absl::MutexLock lock(&mu);
    if (stopped.load()) return false;
    call = ctx;
    return true;
  }
  void Detach() {
    absl::MutexLock lock(&mu);
    call = nullptr;
  }

  const std::string stream_id, job_id;
  std::atomic<bool> stopped{false};
  // The final message (done or failed) is being sent: from now on the job
  // may stop being pending because the coordinator acknowledged it.
  std::atomic<bool> finishing{false};
  mutable absl::Mutex mu;
  std::string reason ABSL_GUARDED_BY(mu);
  grpc::ClientContext* call ABSL_GUARDED_BY(mu) = nullptr;
};

// One job's ReportJob stream(s). Telemetry goes out on the live stream only
// (best effort); images and the final message are kept, so that when the
// live stream breaks the whole report can be sent again on a fresh one.
class FarmWorker::Reporter {
 public:
  struct Outcome {
    enum Kind { kAcked, kStopped, kGaveUp } kind = kGaveUp;
    v1::ReportAck ack;
    std::string error;  // kGaveUp: the last error
  };

  Reporter(FarmWorker* worker, ActiveJob* job, std::string worker_id)
      : worker_(worker), job_(job), worker_id_(std::move(worker_id)) {}
  ~Reporter() { Abandon(); }

  void Step(const v1::StepTelemetry& step) {
    v1::JobReport m = Envelope();
    *m.mutable_step() = step;
    if (EnsureLive()) WriteLive(m);
  }

  void Image(v1::FinishedImage image) {
    v1::JobReport m = Envelope();
    *m.mutable_image() = std::move(image);
    kept_.push_back(std::move(m));
    // A fresh stream starts with everything kept, this image included.
    if (live_) {
      WriteLive(kept_.back());
    } else {
      EnsureLive();
    }
  }

  // Sends `done` or `failed` and waits for the coordinator's answer, sending
  // everything again while the stream keeps breaking.
  Outcome Finish(v1::JobReport final_message) {
    kept_.push_back(Envelope());
    kept_.back().MergeFrom(final_message);
    job_->finishing.store(true);
    const FarmWorkerOptions& o = worker_->options_;
    if (!job_->stopped.load()) {
      const bool sent = live_ ? WriteLive(kept_.back()) : (!live_broken_ && OpenLive() && WriteAllKept());
      if (sent) {
        live_->writer->WritesDone();
        absl::Status s = CloseLive();
        if (s.ok()) return Acked();
        last_error_ = s;
      }
    }
    Abandon();
    const absl::Time deadline = absl::Now() + o.report_deadline;
    absl::Duration backoff = o.min_backoff;
    for (int attempt = 1;; ++attempt) {
      if (job_->stopped.load()) return {Outcome::kStopped, {}, job_->Reason()};
      if (IsPermanent(last_error_.code())) return {Outcome::kGaveUp, {}, last_error_.ToString()};
      if (absl::Now() + backoff > deadline) {
        return {Outcome::kGaveUp, {}, absl::StrCat("no report accepted within ",
                                                   absl::FormatDuration(o.report_deadline), "; last error: ",
                                                   last_error_.ToString())};
      }
      worker_->Log(absl::StrCat("report of job ", job_->job_id, " failed (", last_error_.ToString(),
                                "); sending it again in ", absl::FormatDuration(backoff), " (attempt ",
                                attempt + 1, ")"));
      if (last_error_.code() == absl::StatusCode::kNotFound) worker_->RequestHeartbeat();
      // The backoff; cut short when the coordinator was away and is back.
      const bool was_connected = worker_->channel_->GetState(false) == GRPC_CHANNEL_READY;
      if (was_connected || !worker_->WaitForCoordinator(backoff, worker_->abort_notification_)) {
        if (worker_->abort_notification_.WaitForNotificationWithTimeout(was_connected ? backoff : absl::ZeroDuration())) {
          return {Outcome::kStopped, {}, "worker stopping"};
        }
      }
      backoff = std::min(backoff * 2, o.max_backoff);
      if (job_->stopped.load()) return {Outcome::kStopped, {}, job_->Reason()};
      if (OpenLive() && WriteAllKept()) {
        live_->writer->WritesDone();
        absl::Status s = CloseLive();
        if (s.ok()) return Acked();
        last_error_ = s;
      }
      Abandon();
    }
  }

 private:
  struct Stream {
    grpc::ClientContext ctx;
    v1::ReportAck ack;
    std::unique_ptr<grpc::ClientWriter<v1::JobReport>> writer;
  };

  v1::JobReport Envelope() const {
    v1::JobReport m;
    m.set_worker_id(worker_id_);
    m.set_job_stream_id(job_->stream_id);
    m.set_job_id(job_->job_id);
    return m;
  }

  Outcome Acked() { return {Outcome::kAcked, ack_, ""}; }

  // A fresh stream; false when the job is stopped (nothing is opened).
  bool OpenLive() {
    Abandon();
    auto s = std::make_unique<Stream>();
    // The session of the registration now in force: a stream reopened after
    // registering again carries the new one.
    worker_->PrepareCall(&s->ctx, worker_->options_.stream_timeout);
    if (!job_->Attach(&s->ctx)) return false;
    s->writer = worker_->stub_->ReportJob(&s->ctx, &s->ack);
    live_ = std::move(s);
    live_broken_ = false;
    return true;
  }

  // The live stream, reopened (with every kept message sent first, so each
  // stream carries a whole report) at most once per max_backoff after a
  // break; false while there is none. It runs on the rendering thread, so it
  // never waits for a connection: with the coordinator away, opening a
  // stream could stall the render for a whole connect timeout.
  bool EnsureLive() {
    if (live_) return true;
    if (job_->stopped.load()) return false;
    if (live_broken_ && absl::Now() < next_reopen_) return false;
    next_reopen_ = absl::Now() + worker_->options_.max_backoff;
    if (worker_->channel_->GetState(/*try_to_connect=*/true) != GRPC_CHANNEL_READY) {
      live_broken_ = true;
      last_error_ = absl::UnavailableError("no connection to the coordinator");
      return false;
    }
    return OpenLive() && WriteAllKept();
  }

  bool WriteAllKept() {
    for (const v1::JobReport& m : kept_) {
      if (!WriteLive(m)) return false;
    }
    return true;
  }

  // False (and the stream closed, its status kept) when the write fails.
  bool WriteLive(const v1::JobReport& m) {
    if (!live_) return false;
    if (live_->writer->Write(m)) return true;
    last_error_ = CloseLive();
    if (last_error_.ok()) last_error_ = absl::UnavailableError("the report stream closed early");
    return false;
  }

  // Finish()es the live stream; its status (the ack is in ack_ when OK).
  absl::Status CloseLive() {
    if (!live_) return absl::UnavailableError("no report stream");
    absl::Status s = FromGrpc(live_->writer->Finish());
    job_->Detach();
    if (s.ok()) ack_ = live_->ack;
    live_.reset();
    if (!s.ok()) {
      live_broken_ = true;
      next_reopen_ = absl::Now() + worker_->options_.max_backoff;
    }
    return s;
  }

  // Ends a stream that will not be finished normally: the coordinator sees a
  // cancelled call, never a half report taken as whole.
  void Abandon() {
    if (!live_) return;
    live_->ctx.TryCancel();
    (void)live_->writer->Finish();
    job_->Detach();
    live_.reset();
    live_broken_ = true;
  }

  FarmWorker* const worker_;
  ActiveJob* const job_;
  const std::string worker_id_;
  std::unique_ptr<Stream> live_;
  bool live_broken_ = false;
  absl::Time next_reopen_ = absl::InfinitePast();
  std::vector<v1::JobReport> kept_;
  v1::ReportAck ack_;
  absl::Status last_error_ = absl::UnavailableError("not sent yet");
};

FarmWorker::FarmWorker(FarmWorkerOptions options, std::unique_ptr<Renderer> renderer)
    : options_(std::move(options)), renderer_(std::move(renderer)), model_(renderer_->info().name) {}

FarmWorker::~FarmWorker() { StopKeeper(); }

void FarmWorker::Log(const std::string& line) const {
  if (options_.log) {
    options_.log(line);
    return;
  }
  // One write per line, so lines of the two threads never interleave.
  const std::string out = absl::StrCat(LogTimestamp(),
                                       " sdfarm-worker ", options_.worker_id, ": ", line, "\n");
  std::fwrite(out.data(), 1, out.size(), stderr);
  std::fflush(stderr);
}

FarmWorkerStats FarmWorker::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

std::string FarmWorker::worker_id() const {
  absl::MutexLock lock(&mu_);
  return registered_ ? registration_.worker_id : options_.worker_id;
}

void FarmWorker::Drain() {
  if (draining_.exchange(true)) return;
  Log("draining: finishing the current job, taking no new ones");
  drain_notification_.Notify();
  RequestHeartbeat();  // tell the coordinator now
}

void FarmWorker::Abort() {
  Drain();
  if (aborting_.exchange(true)) return;
  Log("stopping now: the current job is dropped and will be redelivered after its lease");
  abort_notification_.Notify();
  std::shared_ptr<ActiveJob> job;
  {
    absl::MutexLock lock(&mu_);
    job = active_;
  }
  if (job) job->Stop("worker stopping");
}

void FarmWorker::RequestHeartbeat() {
  absl::MutexLock lock(&mu_);
  heartbeat_now_ = true;
  keeper_cv_.Signal();
}

bool FarmWorker::WaitForCoordinator(absl::Duration d, absl::Notification& stop) {
  const absl::Time deadline = absl::Now() + d;
  while (!stop.HasBeenNotified()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    if (channel_->WaitForConnected(absl::ToChronoTime(absl::Now() + std::min(left, absl::Milliseconds(200))))) {
      return true;
    }
  }
  return channel_->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY;
}

bool FarmWorker::SleepUnlessDraining(absl::Duration d) {
  return !drain_notification_.WaitForNotificationWithTimeout(d);
}

// ------------------------------------------------------------ registration --

void FarmWorker::PrepareCall(grpc::ClientContext* ctx, absl::Duration timeout) const {
  PrepareContext(ctx, options_.token, timeout);
  std::string session;
  {
    absl::MutexLock lock(&mu_);
    session = registration_.session;
  }
  if (!session.empty()) ctx->AddMetadata(kSessionMetadataKey, session);
}

absl::StatusOr<FarmWorker::Registration> FarmWorker::RegisterOnce(const std::string& worker_id,
                                                                  const std::string& session,
                                                                  absl::Duration timeout) {
  const engine::ModelInfo& info = renderer_->info();
  v1::RegisterRequest req;
  v1::WorkerInfo* wi = req.mutable_info();
  wi->set_host(HostName());
  wi->set_device(info.device);
  const bool cpu = info.device.empty() || absl::StartsWith(info.device, "cpu");
  wi->set_device_name(cpu ? CpuName() : info.device);
  wi->set_device_memory_bytes(cpu ? MemTotalBytes() : 0);
  wi->set_model(model_);
  wi->set_model_hash(info.hash);
  wi->set_batch_size(options_.batch_size);
  wi->set_version(SDFARM_VERSION);
  wi->set_native_width(info.default_width);
  wi->set_native_height(info.default_height);
  wi->set_sdxl(info.sdxl);
  req.set_worker_id(worker_id);
  req.set_session(session);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, options_.token, timeout);
  v1::RegisterResponse resp;
  RETURN_IF_ERROR(FromGrpc(stub_->Register(&ctx, req, &resp)));
  Registration reg;
  reg.worker_id = resp.worker_id().empty() ? worker_id : resp.worker_id();
  reg.session = resp.session();
  reg.lease = resp.lease_ms() > 0 ? absl::Milliseconds(resp.lease_ms()) : absl::Seconds(60);
  reg.max_attempts = resp.max_attempts() > 0 ? resp.max_attempts() : 3;
  if (reg.session.empty()) {
    return absl::FailedPreconditionError(
        "the coordinator handed out no session: it is older than this worker (upgrade the coordinator)");
  }
  absl::MutexLock lock(&mu_);
  ++stats_.registrations;
  return reg;
}

absl::Status FarmWorker::RegisterAtStart() {
  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  absl::Duration backoff = options_.min_backoff;
  bool logged_wait = false;
  while (true) {
    // Each attempt ends by the overall deadline (a blackholed address would
    // otherwise hold one attempt for the whole RPC timeout).
    const absl::Duration attempt =
        std::max(std::min(deadline - absl::Now(), options_.rpc_timeout), absl::Milliseconds(500));
    absl::StatusOr<Registration> reg = RegisterOnce(options_.worker_id, "", attempt);
    if (reg.ok()) {
      Log(absl::StrCat("registered as ", reg->worker_id, " for model ", model_, " hash ", renderer_->info().hash,
                       " (lease ", absl::FormatDuration(reg->lease), ", max attempts ", reg->max_attempts,
                       ", batch size ", options_.batch_size, ")"));
      absl::MutexLock lock(&mu_);
      registration_ = *std::move(reg);
      registered_ = true;
      return absl::OkStatus();
    }
    const absl::StatusCode code = reg.status().code();
    if (code == absl::StatusCode::kUnauthenticated || code == absl::StatusCode::kPermissionDenied) {
      return absl::Status(code, absl::StrCat("the coordinator at ", options_.coordinator,
                                             " refused this worker's token (give the worker token with --token "
                                             "or SDFARM_WORKER_TOKEN): ",
                                             reg.status().message()));
    }
    // ALREADY_EXISTS: a live registration holds this worker id (this worker,
    // restarted at once): it lapses after the coordinator's heartbeat timeout.
    if (code != absl::StatusCode::kUnavailable && code != absl::StatusCode::kDeadlineExceeded &&
        code != absl::StatusCode::kAlreadyExists) {
      return absl::Status(code, absl::StrCat("the coordinator at ", options_.coordinator,
                                             " refused to register this worker: ", reg.status().message()));
    }
    if (absl::Now() + backoff > deadline) {
      return absl::UnavailableError(absl::StrCat("coordinator ", options_.coordinator, " unreachable for ",
                                                 absl::FormatDuration(options_.connect_timeout),
                                                 " (--connect-timeout): ", reg.status().message()));
    }
    if (!logged_wait) {
      Log(absl::StrCat("waiting for the coordinator at ", options_.coordinator, ": ", reg.status().message()));
      logged_wait = true;
    }
    // The backoff; cut short when the coordinator was away and is back.
    const bool was_connected = channel_->GetState(false) == GRPC_CHANNEL_READY;
    if (was_connected || !WaitForCoordinator(backoff, drain_notification_)) {
      if (!SleepUnlessDraining(was_connected ? backoff : absl::ZeroDuration())) return absl::OkStatus();
    }
    if (draining_.load()) return absl::OkStatus();  // stopped before registering
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

// --------------------------------------------------------------------- run --

absl::Status FarmWorker::Run() {
  auto channel = MakeChannel(options_.coordinator, options_.tls_ca);
  if (!channel.ok()) return channel.status();
  channel_ = *std::move(channel);
  stub_ = v1::WorkerService::NewStub(channel_);
  RETURN_IF_ERROR(RegisterAtStart());
  if (draining_.load()) {
    Log("stopped before taking any job");
    return absl::OkStatus();
  }
  StartKeeper();
  absl::Status result = absl::OkStatus();
  if (!draining_.load()) result = ClaimLoop();
  StopKeeper();
  SayGoodbye();
  const FarmWorkerStats st = stats();
  Log(absl::StrCat("stopped: ", st.jobs_done, " jobs done (", st.images, " images), ", st.jobs_failed,
                   " failed, ", st.jobs_dropped, " dropped"));
  return result;
}

absl::StatusOr<std::optional<FarmWorker::ClaimedJob>> FarmWorker::NextJob() {
  // The coordinator picks: a job this worker held before it registered
  // again, one whose worker was lost, or a new one (docs/farm.md).
  v1::ClaimRequest req;
  req.set_max_wait_ms(absl::ToInt64Milliseconds(options_.claim_wait));
  v1::ClaimResponse resp;
  grpc::ClientContext ctx;
  PrepareCall(&ctx, options_.claim_wait + options_.rpc_timeout);
  absl::Status s = FromGrpc(stub_->Claim(&ctx, req, &resp));
  if (!s.ok()) {
    // The coordinator forgot this worker (it restarted): the keeper registers again.
    if (s.code() == absl::StatusCode::kNotFound) RequestHeartbeat();
    return s;
  }
  if (!resp.has_job()) return std::nullopt;
  ClaimedJob job;
  job.stream_id = resp.job().stream_id();
  job.job_id = resp.job().job_id();
  job.payload = resp.job().payload();
  job.deliveries = resp.job().deliveries();
  return std::optional<ClaimedJob>(std::move(job));
}

absl::Status FarmWorker::ClaimLoop() {
  absl::Duration backoff = options_.min_backoff;
  bool failing = false;
  while (!draining_.load()) {
    absl::StatusOr<std::optional<ClaimedJob>> job;
    try {
      job = NextJob();
    } catch (const std::exception& e) {
      job = absl::InternalError(absl::StrCat("claiming a job: ", e.what()));
    }
    if (!job.ok()) {
      // A token the coordinator refuses will not start working by retrying
      // (it was restarted with another one, say): stop with the error, so
      // that whoever runs the worker sees it, rather than idle forever.
      const absl::StatusCode code = job.status().code();
      if (code == absl::StatusCode::kUnauthenticated || code == absl::StatusCode::kPermissionDenied) {
        return absl::Status(code, absl::StrCat("the coordinator at ", options_.coordinator,
                                               " refuses this worker: ", job.status().message()));
      }
      if (!failing) Log(absl::StrCat("cannot take jobs (retrying): ", job.status().ToString()));
      failing = true;
      SleepUnlessDraining(backoff);
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    if (failing) Log("taking jobs again");
    failing = false;
    backoff = options_.min_backoff;
    if (!job->has_value()) continue;
    // A job claimed just as draining began is still rendered: it is ours now,
    // and leaving it would delay it by a whole lease. After Abort it is left.
    if (aborting_.load()) {
      Log(absl::StrCat("leaving job ", (*job)->job_id, " to be redelivered (stopping)"));
      break;
    }
    // Nothing may escape the main loop either: a job that hits an internal
    // error (out of memory building a report, say) is dropped and will be
    // redelivered after its lease; the worker goes on.
    try {
      ProcessJob(**job);
    } catch (const std::exception& e) {
      {
        absl::MutexLock lock(&mu_);
        active_.reset();
        ++stats_.jobs_dropped;
      }
      Log(absl::StrCat("job ", (*job)->job_id, " dropped after an internal error: ", e.what()));
    }
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------------- a job --

void FarmWorker::ProcessJob(const ClaimedJob& queued) {
  const absl::Time start = absl::Now();
  auto job = std::make_shared<ActiveJob>(queued.stream_id, queued.job_id);
  Registration reg;
  {
    absl::MutexLock lock(&mu_);
    reg = registration_;
    active_ = job;
    heartbeat_now_ = true;  // list it (renewing its lease) at once
    keeper_cv_.Signal();
  }
  if (aborting_.load()) job->Stop("worker stopping");

  Reporter reporter(this, job.get(), reg.worker_id);
  int images = 0;
  const std::optional<v1::JobReport> final_message = RenderJob(queued, reg, *job, reporter, &images);
  Reporter::Outcome outcome;
  if (!final_message || job->stopped.load()) {
    outcome = {Reporter::Outcome::kStopped, {}, job->Reason()};
  } else {
    outcome = reporter.Finish(*final_message);
  }
  {
    absl::MutexLock lock(&mu_);
    active_.reset();
  }

  const std::string elapsed = Seconds(absl::ToDoubleSeconds(absl::Now() - start));
  std::string line;
  FarmWorkerStats delta;
  switch (outcome.kind) {
    case Reporter::Outcome::kAcked:
      if (!outcome.ack.accepted()) {
        delta.jobs_dropped = 1;
        line = absl::StrCat("job ", queued.job_id, ": the coordinator discarded the report (lease lost)");
      } else if (outcome.ack.cancel()) {
        delta.jobs_dropped = 1;
        line = absl::StrCat("job ", queued.job_id, ": its sweep was cancelled");
      } else if (final_message->has_done()) {
        delta.jobs_done = 1;
        delta.images = images;
        line = absl::StrCat("job ", queued.job_id, " done in ", elapsed, " (", images, " images)");
      } else {
        delta.jobs_failed = 1;
        line = absl::StrCat("job ", queued.job_id, ": failure reported");
      }
      break;
    case Reporter::Outcome::kStopped:
      delta.jobs_dropped = 1;
      line = absl::StrCat("job ", queued.job_id, " stopped after ", elapsed, ": ", outcome.error,
                          "; nothing more is reported");
      break;
    case Reporter::Outcome::kGaveUp:
      delta.jobs_dropped = 1;
      line = absl::StrCat("job ", queued.job_id, ": could not report it (", outcome.error,
                          "); it will be redelivered after its lease");
      break;
  }
  // Log first: whoever sees the counters move (tests, the final summary) also sees the line.
  Log(line);
  {
    absl::MutexLock lock(&mu_);
    stats_.jobs_done += delta.jobs_done;
    stats_.jobs_failed += delta.jobs_failed;
    stats_.jobs_dropped += delta.jobs_dropped;
    stats_.images += delta.images;
  }
}

std::optional<sdfarm::v1::JobReport> FarmWorker::RenderJob(const ClaimedJob& queued, const Registration& reg,
                                                           ActiveJob& job, Reporter& reporter, int* images) {
  const absl::Time start = absl::Now();
  auto failed = [&](const std::string& error, bool retryable) {
    Log(absl::StrCat("job ", queued.job_id, " failed", retryable ? "" : " (not retryable)", ": ", error));
    v1::JobReport m;
    m.mutable_failed()->set_error(error);
    m.mutable_failed()->set_retryable(retryable);
    return m;
  };
  if (queued.deliveries > reg.max_attempts) {
    Log(absl::StrCat("claimed job ", queued.job_id, " (delivery ", queued.deliveries, ")"));
    return failed(absl::StrCat("given up after ", queued.deliveries, " deliveries: the workers holding it were lost"),
                  false);
  }
  absl::StatusOr<JobPayload> payload = JobPayload::FromJson(queued.payload);
  if (!payload.ok()) {
    Log(absl::StrCat("claimed job ", queued.job_id, " (delivery ", queued.deliveries, ")"));
    return failed(absl::StrCat("bad job payload: ", payload.status().message()), false);
  }
  const size_t n = payload->items.size();
  Log(absl::StrCat("claimed job ", queued.job_id, " (", n, " item", n == 1 ? "" : "s", ", delivery ",
                   queued.deliveries, ")"));
  if (payload->model != model_) {
    return failed(absl::StrCat("the job is for model ", payload->model, " but came from the queue of ", model_),
                  false);
  }
  if (!options_.fail_prompt.empty()) {
    for (const JobItem& item : payload->items) {
      if (absl::StrContains(item.prompt, options_.fail_prompt)) {
        return failed(absl::StrCat("test hook: the prompt of item ", item.index, " contains '", options_.fail_prompt,
                                   "' (SDFARM_TEST_FAIL_PROMPT)"),
                      true);
      }
    }
  }

  // The job's LoRAs and VAE, by name, from this worker's folders.
  engine::RenderRequest whole;
  for (const LoraUse& l : payload->loras) {
    absl::StatusOr<std::string> path = FindNamedAsset(options_.lora_dir, "--lora-dir", "LoRA", l.name);
    if (!path.ok()) return failed(std::string(path.status().message()), true);
    whole.loras.push_back({*path, l.scale});
  }
  {
    std::string vae_path;
    if (!payload->vae.empty()) {
      absl::StatusOr<std::string> path = FindNamedAsset(options_.vae_dir, "--vae-dir", "VAE", payload->vae);
      if (!path.ok()) return failed(std::string(path.status().message()), true);
      vae_path = *path;
    }
    if (engine::Status s = renderer_->UseVae(vae_path); !s.ok()) return failed(s.message(), true);
  }
  whole.width = payload->width;
  whole.height = payload->height;
  whole.steps = payload->steps;
  whole.sampler = payload->sampler;
  whole.prompt_chunking = payload->prompt_chunking;
  whole.seed_mode = engine::SeedMode::kPerImage;  // pixels equal sdfarm-render's, whatever the batch
  for (const JobItem& it : payload->items) {
    whole.items.push_back(RenderItemFor(it));
  }
  // The whole job up front: a bad request fails before any compute, and can
  // succeed nowhere else either.
  if (engine::Status s = renderer_->Validate(whole); !s.ok()) {
    const bool retryable =
        s.code() != engine::StatusCode::kInvalidArgument && s.code() != engine::StatusCode::kUnimplemented;
    return failed(s.message(), retryable);
  }

  const size_t batch_size = static_cast<size_t>(std::max(1, options_.batch_size));
  const int num_batches = static_cast<int>((n + batch_size - 1) / batch_size);
  const engine::ModelInfo& info = renderer_->info();
  StepTelemetryState telemetry;
  for (int b = 0; b < num_batches; ++b) {
    if (job.stopped.load()) return std::nullopt;
    engine::RenderRequest req = whole;
    const size_t begin = static_cast<size_t>(b) * batch_size, end = std::min(n, begin + batch_size);
    req.items.assign(whole.items.begin() + begin, whole.items.begin() + end);
    auto on_step = [&](const engine::StepInfo& s) {
      OnStep(s, num_batches, telemetry, reporter);
      return !job.stopped.load();
    };
    const absl::Time batch_start = absl::Now();
    engine::StatusOr<engine::RenderResult> result = renderer_->Render(req, on_step);
    const double batch_seconds = absl::ToDoubleSeconds(absl::Now() - batch_start);
    if (job.stopped.load()) return std::nullopt;
    if (!result.ok()) return failed(absl::StrCat("render: ", result.status().message()), true);
    if (result->images.size() != req.items.size()) {
      return failed(absl::StrCat("render: ", result->images.size(), " images for ", req.items.size(), " items"),
                    true);
    }
    for (size_t i = 0; i < req.items.size(); ++i) {
      const engine::Image& image = result->images[i];
      const engine::GenerationParameters params =
          engine::ParametersFor(info, req, req.items[i], image.width, image.height, kVersion, result->loras);
      auto png = engine::EncodePng(image, {{"parameters", engine::FormatA1111Parameters(params)}});
      if (!png.ok()) return failed(absl::StrCat("encoding the PNG: ", png.status().message()), true);
      v1::FinishedImage fi;
      fi.set_item_index(payload->items[begin + i].index);
      fi.set_png(*std::move(png));
      fi.set_render_seconds(batch_seconds / static_cast<double>(req.items.size()));
      if (i < result->dropped_tokens.size() && result->dropped_tokens[i] > 0) {
        fi.set_dropped_tokens(result->dropped_tokens[i]);
        Log(absl::StrCat("job ", queued.job_id, ": item ", payload->items[begin + i].index, ": ",
                         result->dropped_tokens[i], " prompt tokens cut at CLIP's 77-token limit",
                         " (the sweep's prompt_chunking keeps them)"));
      }
      reporter.Image(std::move(fi));
      ++*images;
    }
  }
  v1::JobReport done;
  done.mutable_done()->set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return done;
}

void FarmWorker::OnStep(const engine::StepInfo& s, int num_batches, StepTelemetryState& state,
                        Reporter& reporter) {
  // Steps are counted over the whole job, so its progress only grows.
  const int total = s.total_steps * num_batches;
  ++state.steps_done;
  ++state.steps_since_sent;
  state.seconds_since_sent += s.step_seconds;
  if (options_.previews > 0 && state.steps_done % options_.previews == 0) state.preview_due = true;
  const absl::Time now = absl::Now();
  if (state.steps_done < total && now - state.last_sent < options_.telemetry_interval) return;
  v1::StepTelemetry t;
  t.set_step(state.steps_done);
  t.set_total_steps(total);
  t.set_timestep(s.timestep);
  const double per_step = state.seconds_since_sent / std::max(1, state.steps_since_sent);
  t.set_ms_per_step(per_step * 1000);
  t.set_iterations_per_second(per_step > 0 ? 1 / per_step : 0);
  t.set_device_memory_used_bytes(ResidentBytes());
  if (state.preview_due) {
    // A due preview waits for the next message that the rate limit lets out.
    std::vector<engine::Image> previews = renderer_->Previews(s);
    if (!previews.empty()) {
      auto png = engine::EncodePng(previews.front(), {}, /*compression_level=*/1);
      if (png.ok()) t.set_preview_png(*std::move(png));
    }
    state.preview_due = false;
  }
  reporter.Step(t);
  state.last_sent = now;
  state.steps_since_sent = 0;
  state.seconds_since_sent = 0;
}

// ------------------------------------------------------------------ keeper --

void FarmWorker::StartKeeper() {
  {
    absl::MutexLock lock(&mu_);
    keeper_stop_ = false;
  }
  keeper_ = std::thread([this] { KeeperLoop(); });
}

void FarmWorker::StopKeeper() {
  {
    absl::MutexLock lock(&mu_);
    keeper_stop_ = true;
    if (heartbeat_call_ != nullptr) heartbeat_call_->TryCancel();
    keeper_cv_.Signal();
  }
  if (keeper_.joinable()) keeper_.join();
}

void FarmWorker::KeeperLoop() {
  absl::Time next_heartbeat = absl::Now() + options_.heartbeat_interval;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (keeper_stop_) return;
    }
    // Nothing may escape this thread: a failed iteration is logged and the
    // next one tries again.
    try {
      KeeperIteration(next_heartbeat);
    } catch (const std::exception& e) {
      Log(absl::StrCat("keeper: ", e.what()));
      absl::SleepFor(absl::Milliseconds(100));
    } catch (...) {
      Log("keeper: unknown exception");
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
}

void FarmWorker::KeeperIteration(absl::Time& next_heartbeat) {
  std::shared_ptr<ActiveJob> job;
  Registration reg;
  {
    absl::MutexLock lock(&mu_);
    while (!keeper_stop_) {
      if (heartbeat_now_) {
        heartbeat_now_ = false;
        next_heartbeat = absl::Now();
      }
      if (absl::Now() >= next_heartbeat) break;
      keeper_cv_.WaitWithDeadline(&mu_, next_heartbeat);
    }
    if (keeper_stop_) return;
    job = active_;
    reg = registration_;
  }
  SendHeartbeat(job, reg);
  // The heartbeat renews the lease of the job it lists: at least three
  // chances per lease, so one lost heartbeat (or a coordinator restart of a
  // few seconds) costs no job.
  next_heartbeat = absl::Now() + std::min(options_.heartbeat_interval, std::max(reg.lease / 3, absl::Milliseconds(100)));
}

void FarmWorker::SayGoodbye() {
  Registration reg;
  {
    absl::MutexLock lock(&mu_);
    reg = registration_;
  }
  if (reg.worker_id.empty()) return;
  // The coordinator then stops listing this worker; a worker that cannot say
  // so (killed, unreachable) is listed as lost, then forgotten.
  v1::HeartbeatRequest req;
  req.set_worker_id(reg.worker_id);
  req.set_exiting(true);
  v1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  PrepareCall(&ctx, std::min(options_.rpc_timeout, absl::Seconds(2)));
  (void)stub_->Heartbeat(&ctx, req, &resp);
}

void FarmWorker::SendHeartbeat(const std::shared_ptr<ActiveJob>& job, const Registration& reg) {
  v1::HeartbeatRequest req;
  req.set_worker_id(reg.worker_id);
  if (job && !job->stopped.load()) {
    v1::HeldJob* held = req.add_jobs();
    held->set_stream_id(job->stream_id);
    held->set_job_id(job->job_id);
  }
  req.set_device_memory_used_bytes(ResidentBytes());
  req.set_draining(draining_.load());
  v1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  // Bounded by the renewal period too: the heartbeat renews the lease.
  PrepareCall(&ctx, std::min({options_.rpc_timeout, absl::Seconds(5), std::max(reg.lease / 3, absl::Milliseconds(500))}));
  // Waits (within the deadline) for a connection instead of failing at once
  // while the channel is in TRANSIENT_FAILURE. This also keeps the channel
  // reconnecting: with gRPC 1.51 a channel whose coordinator went away and
  // came back is otherwise reconnected only every 5-10 s by fail-fast calls,
  // and every report and heartbeat of that time fails.
  ctx.set_wait_for_ready(true);
  {
    absl::MutexLock lock(&mu_);
    if (keeper_stop_) return;
    heartbeat_call_ = &ctx;
  }
  absl::Status s = FromGrpc(stub_->Heartbeat(&ctx, req, &resp));
  {
    absl::MutexLock lock(&mu_);
    heartbeat_call_ = nullptr;
  }
  if (s.ok()) {
    if (coordinator_unreachable_) Log("the coordinator answers again");
    coordinator_unreachable_ = false;
    if (job) {
      for (const std::string& id : resp.lost_job_stream_ids()) {
        // (Not while finishing: the job may just have been acknowledged from
        // its own report; the report's answer tells.)
        if (id == job->stream_id && !job->finishing.load()) {
          job->Stop("lost lease: the coordinator says another worker holds it");
        }
      }
      for (const std::string& id : resp.cancelled_job_stream_ids()) {
        if (id == job->stream_id) job->Stop("its sweep was cancelled");
      }
    }
    return;
  }
  if (s.code() == absl::StatusCode::kNotFound) {
    // The coordinator restarted and forgot us: the same id keeps our claims.
    Log(absl::StrCat("the coordinator does not know this worker (", s.message(), "); registering again"));
    absl::StatusOr<Registration> again = RegisterOnce(reg.worker_id, reg.session, options_.rpc_timeout);
    if (!again.ok()) {
      Log(absl::StrCat("registering again failed (retrying): ", again.status().ToString()));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      registration_.session = again->session;
      registration_.lease = again->lease;
      registration_.max_attempts = again->max_attempts;
    }
    Log(absl::StrCat("registered again as ", reg.worker_id));
    return;
  }
  if (s.code() == absl::StatusCode::kCancelled) return;  // StopKeeper
  if (!coordinator_unreachable_) Log(absl::StrCat("heartbeat failed (retrying): ", s.ToString()));
  coordinator_unreachable_ = true;
}

}  // namespace sdfarm::worker
