// The farm worker: claims jobs of one model from the coordinator, renders
// them and reports every image to it, following the job lifecycle in
// docs/farm.md (points 2-8). It has no Redis access: every call goes to the
// coordinator with the worker token and the session secret of its
// registration (`sdfarm-session` metadata).
//
//   FarmWorkerOptions o;
//   o.coordinator = "10.0.0.2:7733";
//   o.token = token;
//   o.worker_id = "gpu3-1234";
//   FarmWorker worker(o, std::move(renderer));   // the model is loaded already
//   absl::Status s = worker.Run();               // until Drain()/Abort(); errors are fatal
//
// Threads: Run() is the main thread (claims, renders, reports, one job at a
// time). A keeper thread, owned by the worker, sends the heartbeat every 2 s
// (at most lease/3), which lists the current job and so renews its lease,
// and registers again when the coordinator has forgotten the worker; it
// stops the current job when its lease is lost or its sweep cancelled. Drain() and Abort() may be
// called from any thread (sdfarm-worker calls them from its signal thread).
//
// Reports: one ReportJob stream per job carries telemetry (rate-limited),
// each image as its batch finishes, then JobDone or JobFailed. The images
// and the final message are kept until the coordinator has acknowledged
// them; if the stream breaks they are all sent again on a new stream, with
// backoff, for as long as the worker still holds the job's lease (and at
// most report_deadline). A job that is stopped (lease lost, sweep
// cancelled, Abort) gets nothing more.
#ifndef SDFARM_WORKER_FARM_FARM_WORKER_H_
#define SDFARM_WORKER_FARM_FARM_WORKER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "sdfarm.grpc.pb.h"
#include "worker/farm/renderer.h"

namespace sdfarm::worker {

struct FarmWorkerOptions {
  std::string coordinator = "127.0.0.1:7733";
  std::string token;    // worker token; empty: none (coordinator started with --no-auth)
  std::string tls_ca;   // PEM bundle; empty: plaintext
  std::string worker_id;  // must be unique in the farm; "" lets the coordinator pick one
  int batch_size = 4;     // items per engine call
  int previews = 0;       // a preview every N steps; 0: none
  // Where the LoRAs and VAEs that jobs name are: <dir>/<name>.safetensors or
  // the folder <dir>/<name>/. Empty: jobs naming one fail (retryable: another
  // worker may have it).
  std::string lora_dir, vae_dir;
  // Test hook (SDFARM_TEST_FAIL_PROMPT): a job with a prompt containing this
  // fails, retryable, without rendering. Empty: off.
  std::string fail_prompt;

  absl::Duration connect_timeout = absl::Seconds(60);  // first Register
  absl::Duration claim_wait = absl::Seconds(2);        // one Claim's wait for a job (max_wait_ms)
  absl::Duration heartbeat_interval = absl::Seconds(2);
  absl::Duration rpc_timeout = absl::Seconds(10);      // Register, Heartbeat
  absl::Duration stream_timeout = absl::Minutes(10);   // one ReportJob stream, writes included
  absl::Duration report_deadline = absl::Minutes(10);  // resending one job's report
  absl::Duration telemetry_interval = absl::Milliseconds(200);
  absl::Duration min_backoff = absl::Milliseconds(500), max_backoff = absl::Seconds(5);

  // One line per event, without a trailing newline. Default: stderr, with a
  // UTC timestamp and the worker id.
  std::function<void(const std::string&)> log;
};

// What the worker has done so far (for tests and the exit summary).
struct FarmWorkerStats {
  int64_t jobs_done = 0;      // JobDone acknowledged
  int64_t jobs_failed = 0;    // JobFailed acknowledged
  int64_t jobs_dropped = 0;   // stopped, discarded, or not reportable
  int64_t images = 0;         // in acknowledged JobDone reports
  int64_t registrations = 0;  // Register calls that succeeded
};

class FarmWorker {
 public:
  FarmWorker(FarmWorkerOptions options, std::unique_ptr<Renderer> renderer);
  ~FarmWorker();  // stops the keeper thread if Run() did not return yet
  FarmWorker(const FarmWorker&) = delete;
  FarmWorker& operator=(const FarmWorker&) = delete;

  // Registers (retrying UNAVAILABLE up to connect_timeout), then claims and
  // renders jobs until Drain() or Abort(). OK on a clean stop; an error when
  // the worker cannot work at all: the coordinator refused the token
  // (Unauthenticated / PermissionDenied, at start or later) or stayed
  // unreachable at start, a bad TLS CA file. Call once.
  absl::Status Run();

  // Finish the current job, report it, take no new one; Run() then returns.
  void Drain();
  // Stop now: the current render is cancelled and nothing more is reported
  // (the job is redelivered once its lease runs out). Implies Drain().
  void Abort();

  bool draining() const { return draining_.load(); }
  FarmWorkerStats stats() const;
  // The id in use (the coordinator's answer to Register), once registered.
  std::string worker_id() const;

 private:
  struct ActiveJob;
  struct Registration {
    std::string worker_id, session;
    absl::Duration lease;
    int max_attempts = 3;
  };
  // A job as Claim hands it out.
  struct ClaimedJob {
    std::string stream_id, job_id, payload;
    int64_t deliveries = 0;
  };
  class Reporter;
  struct StepTelemetryState {
    int steps_done = 0, steps_since_sent = 0;
    double seconds_since_sent = 0;
    bool preview_due = false;
    absl::Time last_sent = absl::InfinitePast();
  };

  void Log(const std::string& line) const;

  // `session`: the registration being replaced, if any.
  absl::StatusOr<Registration> RegisterOnce(const std::string& worker_id, const std::string& session,
                                            absl::Duration timeout);
  absl::Status RegisterAtStart();
  // The token and the current session on a call, and its deadline.
  void PrepareCall(grpc::ClientContext* ctx, absl::Duration timeout) const;
  // Until draining; an error only for one retrying cannot cure (the
  // coordinator refusing the token).
  absl::Status ClaimLoop();
  // One Claim call: a job, or nullopt when none came within claim_wait.
  absl::StatusOr<std::optional<ClaimedJob>> NextJob();
  // Takes a claimed job to its end: rendered and reported, failed and
  // reported, or stopped.
  void ProcessJob(const ClaimedJob& queued);
  // Renders the job, sending telemetry and images through `reporter`; the
  // report's final message (done or failed), or nullopt when it was stopped.
  std::optional<sdfarm::v1::JobReport> RenderJob(const ClaimedJob& queued, const Registration& reg,
                                                 ActiveJob& job, Reporter& reporter, int* images);
  // Step telemetry (rate-limited) and previews, from the render's step callback.
  void OnStep(const engine::StepInfo& s, int num_batches, StepTelemetryState& state, Reporter& reporter);
  // Wakes the keeper to send a heartbeat now.
  void RequestHeartbeat();

  void StartKeeper();
  void StopKeeper();
  void KeeperLoop();
  void KeeperIteration(absl::Time& next_heartbeat);
  // Lists the current job (renewing its lease), answers lost / cancelled.
  void SendHeartbeat(const std::shared_ptr<ActiveJob>& job, const Registration& reg);
  // Tells the coordinator this worker stops (it is then no longer listed).
  void SayGoodbye();

  // Sleeps up to `d`; returns early (false) when draining starts.
  bool SleepUnlessDraining(absl::Duration d);
  // Waits up to `d` for a connection to the coordinator, returning early once
  // the channel is READY or `stop` is notified; true when READY. (Waiting
  // this way also makes the channel reconnect: gRPC 1.51 retries a channel in
  // TRANSIENT_FAILURE only every 5-10 s for fail-fast calls.)
  bool WaitForCoordinator(absl::Duration d, absl::Notification& stop);

  const FarmWorkerOptions options_;
  const std::unique_ptr<Renderer> renderer_;
  const std::string model_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sdfarm::v1::WorkerService::Stub> stub_;  // thread-safe

  std::atomic<bool> draining_{false}, aborting_{false};
  absl::Notification drain_notification_, abort_notification_;

  mutable absl::Mutex mu_;
  Registration registration_ ABSL_GUARDED_BY(mu_);
  bool registered_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<ActiveJob> active_ ABSL_GUARDED_BY(mu_);
  FarmWorkerStats stats_ ABSL_GUARDED_BY(mu_);
  bool keeper_stop_ ABSL_GUARDED_BY(mu_) = false;
  bool heartbeat_now_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* heartbeat_call_ ABSL_GUARDED_BY(mu_) = nullptr;  // for TryCancel on stop
  absl::CondVar keeper_cv_;
  std::thread keeper_;

  // Keeper-thread state for logging only on changes.
  bool coordinator_unreachable_ = false;
};

}  // namespace sdfarm::worker

#endif  // SDFARM_WORKER_FARM_FARM_WORKER_H_
