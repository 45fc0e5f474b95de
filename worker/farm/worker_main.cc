// sdfarm-worker: flags, model loading, signals; the work is FarmWorker's.
//
// Exit codes: 0 clean stop (signals included), 1 fatal error (model, auth,
// coordinator or Redis unreachable), 2 bad flags.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log_time.h"
#include "worker/farm/farm_worker.h"
#include "worker/farm/renderer.h"
#include "worker/farm/synthetic_engine.h"
#include "worker/tools/cli_flags.h"

namespace sdfarm::worker {
namespace {

constexpr char kProgram[] = "sdfarm-worker";

void DefineFlags(tools::CliFlags& f) {
  f.Add("coordinator", "HOST:PORT", "the coordinator's address", "127.0.0.1:7733");
  f.SetEnv("coordinator", "SDFARM_COORDINATOR");
  f.Add("token", "T", "worker token (the coordinator's --worker-token); none when it runs --no-auth");
  f.SetEnv("token", "SDFARM_WORKER_TOKEN");
  f.Add("tls-ca", "PEM", "CA bundle to verify the coordinator's TLS certificate (default: plaintext)");
  f.SetEnv("tls-ca", "SDFARM_TLS_CA");
  f.Add("model", "PATH",
        "the model to serve: a diffusers pipeline folder or a single-file checkpoint (.safetensors) "
        "(required unless --engine synthetic:MS)");
  f.SetEnv("model", "SDFARM_MODEL");
  f.Add("model-name", "NAME",
        "the model name sweeps ask for, i.e. the queue this worker takes jobs from (default: the folder's "
        "name or the file's stem; 'synthetic' for the synthetic engine)");
  f.Add("model-config", "DIR", "single file: take its configs, tokenizer and scheduler from this diffusers folder");
  f.Add("original-config", "YAML", "single file: its original LDM config (default: <file>.yaml beside it)");
  f.Add("prediction-type", "TYPE", "single file: epsilon or v_prediction, when the file cannot tell");
  f.AddBool("ema", "single file: use its EMA UNet weights");
  f.Add("vae", "PATH", "a VAE to use instead of the model's own (diffusers VAE folder or single file)");
  f.Add("lora-dir", "DIR",
        "where the LoRAs sweeps name are: <DIR>/<name>.safetensors or the diffusers folder <DIR>/<name>/");
  f.SetEnv("lora-dir", "SDFARM_LORA_DIR");
  f.Add("vae-dir", "DIR", "where the VAEs sweeps name are: <DIR>/<name>.safetensors or the folder <DIR>/<name>/");
  f.SetEnv("vae-dir", "SDFARM_VAE_DIR");
  f.Add("device", "DEV", "cpu, cuda or cuda:N", "cpu");
  f.Add("dtype", "TYPE", "fp32, fp16 or bf16 (default: fp32 on cpu, fp16 on cuda)");
  f.Add("threads", "N", "CPU threads for the engine (0: OMP_NUM_THREADS, else one per core)", "0");
  f.Add("batch-size", "N", "images per engine call (more is faster on a GPU and needs more memory)", "4");
  f.Add("engine", "KIND",
        "'synthetic:MS' renders no model: every step sleeps MS milliseconds and images are a deterministic "
        "pattern (tests and benchmarks only; default: the real engine)");
  f.Add("worker-id", "ID", "this worker's name in the farm, unique per worker (default: <host>-<pid>)");
  f.Add("redis-url", "URL", "ignored (deprecated): workers no longer reach Redis; jobs come from the coordinator");
  f.Add("previews", "N", "send a small preview image every N denoising steps (0: none)", "0");
  f.Add("connect-timeout", "SECONDS", "how long to wait for the coordinator at startup", "60");
  f.SetEpilog(
      "Examples:\n"
      "  sdfarm-worker --coordinator 10.0.0.2:7733 --token \"$TOKEN\" --model models/sd15 --device cuda\n"
      "  SDFARM_WORKER_TOKEN=... sdfarm-worker --model /data/sd15 --model-name sd15 --batch-size 8\n"
      "  sdfarm-worker --engine synthetic:20 --model-name sd15 --coordinator 127.0.0.1:7733 --token T\n"
      "\n"
      "The worker loads its model, registers with the coordinator, then renders jobs of that model it\n"
      "claims from the coordinator until stopped (it needs no Redis access). SIGTERM or SIGINT: finish (and report) the current job, take no new one, exit 0;\n"
      "a second signal exits at once (the job is redelivered after its lease).\n"
      "Exit codes: 0 stopped cleanly, 1 fatal error (model, auth, coordinator unreachable), 2 bad flags.\n"
      "Test hook: SDFARM_TEST_FAIL_PROMPT=TEXT fails every job with a prompt containing TEXT (retryable).\n");
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "%s: error: %s (see --help)\n", kProgram, message.c_str());
  return 2;
}

int Fatal(const std::string& message) {
  std::fprintf(stderr, "%s: error: %s\n", kProgram, message.c_str());
  return 1;
}

std::string DefaultWorkerId() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::snprintf(host, sizeof(host), "worker");
  return absl::StrCat(host, "-", getpid());
}

// SIGTERM/SIGINT go through a self-pipe: the handler only write()s the
// signal number (async-signal-safe), and a thread reads it and acts: the
// first signal drains the worker, the second aborts it, and if the process
// has still not exited 10 s after that (a call stuck past its deadline) it
// exits anyway. (Blocking the signals for a sigwait thread does not work
// here: LibTorch starts threads before main, and they would take the signal
// with its default action.)
int g_signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  (void)!write(g_signal_pipe[1], &byte, 1);  // non-blocking; a full pipe holds enough signals already
  errno = saved_errno;
}

class SignalThread {
 public:
  // Installs the handlers; false when the pipe cannot be made.
  static bool Install() {
    if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) return false;
    fcntl(g_signal_pipe[1], F_SETFL, O_NONBLOCK);
    struct sigaction sa = {};
    sa.sa_handler = OnSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    // hiredis writes to its socket with write(): a Redis restart must be an
    // error, not the end of the worker.
    signal(SIGPIPE, SIG_IGN);
    return true;
  }

  SignalThread() : thread_([this] { Loop(); }) {}
  ~SignalThread() {
    quitting_.store(true);
    const unsigned char wake = 0;
    (void)!write(g_signal_pipe[1], &wake, 1);
    thread_.join();
  }

  // Until set, a signal ends the process at once (nothing is held yet).
  void set_worker(FarmWorker* worker) { worker_.store(worker); }

 private:
  void Loop() {
    int count = 0;
    while (!quitting_.load()) {
      pollfd p = {g_signal_pipe[0], POLLIN, 0};
      // After the second signal main should be gone within a few seconds.
      const int ready = poll(&p, 1, count >= 2 ? 10000 : -1);
      if (ready < 0) continue;  // EINTR
      if (ready == 0) {
        std::fprintf(stderr, "%s: still running 10 s after the second signal; exiting\n", kProgram);
        std::_Exit(0);
      }
      unsigned char byte = 0;
      if (read(g_signal_pipe[0], &byte, 1) != 1 || byte == 0) continue;  // 0: the destructor's wake-up
      const int sig = byte;
      ++count;
      FarmWorker* worker = worker_.load();
      if (worker == nullptr) {
        std::fprintf(stderr, "%s: %s before the worker started: exiting\n", kProgram, strsignal(sig));
        std::_Exit(0);
      }
      if (count == 1) {
        worker->Drain();
      } else if (count == 2) {
        worker->Abort();
      } else {
        std::_Exit(0);
      }
    }
  }

  std::atomic<bool> quitting_{false};
  std::atomic<FarmWorker*> worker_{nullptr};
  std::thread thread_;
};

int Main(int argc, char** argv) {
  tools::CliFlags flags(kProgram,
                        "The farm's render worker: renders jobs of one model that it claims from the coordinator "
                        "and reports the images to it.");
  DefineFlags(flags);
  if (auto s = flags.Parse(argc, argv); !s.ok()) return UsageError(s.message());
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return 0;
  }

  FarmWorkerOptions options;
  options.coordinator = flags.Get("coordinator");
  options.token = flags.Get("token");
  options.tls_ca = flags.Get("tls-ca");
  options.worker_id = flags.Has("worker-id") ? flags.Get("worker-id") : DefaultWorkerId();
  if (options.worker_id.empty() || options.worker_id.find_first_of(" \t\r\n") != std::string::npos) {
    return UsageError("--worker-id must be a non-empty name without spaces");
  }
  options.lora_dir = flags.Get("lora-dir");
  options.vae_dir = flags.Get("vae-dir");
  for (const char* dir : {"lora-dir", "vae-dir"}) {
    if (flags.Has(dir) && !std::filesystem::is_directory(flags.Get(dir))) {
      return UsageError(absl::StrCat("--", dir, " ", flags.Get(dir), " is not a folder"));
    }
  }
  if (flags.Has("redis-url")) {
    // Accepted so that an old unit file still starts the worker; never used
    // (and never printed: it may hold a password).
    std::fprintf(stderr, "%s: warning: --redis-url is ignored: workers no longer reach Redis, the coordinator "
                         "hands out their jobs\n", kProgram);
  }
  auto batch = flags.GetInt("batch-size", 1, 1024);
  auto previews = flags.GetInt("previews", 0, 1000);
  auto threads = flags.GetInt("threads", 0, 1024);
  auto connect = flags.GetDouble("connect-timeout", 0, 86400);
  for (const engine::Status& s : {batch.status(), previews.status(), threads.status(), connect.status()}) {
    if (!s.ok()) return UsageError(s.message());
  }
  options.batch_size = static_cast<int>(*batch);
  options.previews = static_cast<int>(*previews);
  options.connect_timeout = absl::Seconds(*connect);
  if (const char* hook = std::getenv("SDFARM_TEST_FAIL_PROMPT"); hook != nullptr) options.fail_prompt = hook;
  if (options.coordinator.empty()) return UsageError("--coordinator HOST:PORT is required");

  const bool synthetic = flags.Has("engine");
  engine::StatusOr<SyntheticOptions> synthetic_options = SyntheticOptions{};
  if (synthetic) {
    synthetic_options = ParseSyntheticEngine(flags.Get("engine"));
    if (!synthetic_options.ok()) return UsageError(synthetic_options.status().message());
    if (flags.Has("model-name")) synthetic_options->model_name = flags.Get("model-name");
  } else if (!flags.Has("model")) {
    return UsageError("--model PATH is required");
  }
  const std::string model_name = flags.Has("model-name") ? flags.Get("model-name")
                                 : synthetic            ? synthetic_options->model_name
                                                        : ModelNameFromDir(flags.Get("model"));
  if (model_name.empty() || model_name.find_first_of(" \t\r\n/") != std::string::npos) {
    return UsageError("the model name must be non-empty, without spaces or '/' (give --model-name)");
  }

  auto signals = std::make_unique<SignalThread>();
  auto log = [&](const std::string& line) {
    std::fprintf(stderr, "%s sdfarm-worker %s: %s\n",
                 LogTimestamp().c_str(),
                 options.worker_id.c_str(), line.c_str());
  };

  // The model first: a worker that cannot render must not register.
  std::unique_ptr<Renderer> renderer;
  if (synthetic) {
    log(absl::StrCat("synthetic engine: ", synthetic_options->step_ms, " ms per step, model ", model_name,
                     flags.Has("model") ? " (--model is not used)" : ""));
    renderer = std::make_unique<SyntheticRenderer>(*synthetic_options);
  } else {
    engine::EngineOptions eo;
    eo.device = flags.Get("device");
    eo.dtype = flags.Get("dtype");
    eo.threads = static_cast<int>(*threads);
    eo.model_config = flags.Get("model-config");
    eo.original_config = flags.Get("original-config");
    eo.prediction_type = flags.Get("prediction-type");
    eo.ema = flags.GetBool("ema");
    eo.vae = flags.Get("vae");
    log(absl::StrCat("loading ", flags.Get("model"), " on ", eo.device, "..."));
    auto loaded = LoadEngineRenderer(flags.Get("model"), eo, model_name);
    if (!loaded.ok()) return Fatal(absl::StrCat("cannot load the model: ", loaded.status().message()));
    renderer = std::move(loaded).value();
    const engine::ModelInfo& info = renderer->info();
    log(absl::StrCat("loaded ", info.name, " (hash ", info.hash, ", ", info.device, " ", info.dtype, ") in ",
                     absl::StrFormat("%.1f s", info.load_seconds)));
  }

  FarmWorker worker(options, std::move(renderer));
  signals->set_worker(&worker);
  absl::Status status;
  try {
    status = worker.Run();
  } catch (const std::exception& e) {
    status = absl::InternalError(e.what());
  }
  signals.reset();  // joined before `worker` goes away
  if (!status.ok()) return Fatal(std::string(status.message()));
  return 0;
}

}  // namespace
}  // namespace sdfarm::worker

int main(int argc, char** argv) {
  if (!sdfarm::worker::SignalThread::Install()) {
    std::perror("sdfarm-worker: signal pipe");
    return 1;
  }
  try {
    return sdfarm::worker::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sdfarm-worker: fatal: %s\n", e.what());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "sdfarm-worker: fatal: unknown exception\n");
    return 1;
  }
}
