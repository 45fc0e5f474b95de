// sdfarm-coordinator: the farm's coordinator process. See docs/farm.md.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_util.h"
#include "common/log_time.h"
#include "common/redis_client.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/listener_limits.h"
#include "coordinator/listener_probe.h"
#include "worker/tools/cli_flags.h"

namespace {

using sdfarm::tools::CliFlags;

// Set by the self-probe when the listener stopped accepting (exit status 4).
std::atomic<bool> g_listener_dead{false};

// Exit status when the self-probe finds the listener dead (3 is
// kExitLostLeadership: another coordinator took over, which a restart must
// not undo).
constexpr int kExitListenerDead = 4;

int Fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "sdfarm-coordinator: error: %s\n", message.c_str());
  return code;
}

// A token from a flag/env value or from a file (first line).
absl::StatusOr<std::string> Token(const CliFlags& flags, const std::string& name) {
  if (flags.Has(name + "-file")) {
    auto text = sdfarm::ReadSmallFile(flags.Get(name + "-file"));
    if (!text.ok()) return text.status();
    std::string t = std::string(absl::StripAsciiWhitespace(*text));
    if (t.empty()) return absl::InvalidArgumentError(flags.Get(name + "-file") + " is empty");
    return t;
  }
  return flags.Get(name);
}

// Credentials to reach this coordinator's own listener: with TLS, its own
// certificate (chain) as the trusted root.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ProbeCredentials(const CliFlags& flags) {
  if (!flags.Has("tls-cert")) return grpc::InsecureChannelCredentials();
  auto cert = sdfarm::ReadSmallFile(flags.Get("tls-cert"));
  if (!cert.ok()) return cert.status();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = *cert;
  return grpc::SslCredentials(ssl);
}

// --health-check HOST:PORT: one check, exit 0 (serving) or 1.
int HealthCheck(const CliFlags& flags) {
  auto creds = ProbeCredentials(flags);
  if (!creds.ok()) return Fail(std::string(creds.status().message()));
  const std::string address = flags.Get("health-check");
  absl::Status s = sdfarm::coordinator::CheckHealth(address, *creds, absl::Seconds(5));
  if (!s.ok()) return Fail("coordinator at " + address + " is not healthy: " + s.ToString(), 1);
  std::printf("coordinator at %s: serving\n", address.c_str());
  return 0;
}

int Run(int argc, char** argv) {
  CliFlags flags("sdfarm-coordinator",
                 "The sdfarm coordinator: takes sweeps from clients (sdfarm), queues their jobs in Redis for the\n"
                 "workers (sdfarm-worker), stores the images they render with metadata.jsonl, and resumes every\n"
                 "unfinished sweep after a restart. Runs until SIGTERM or SIGINT.");
  flags.Add("listen", "HOST:PORT", "address to serve on (port 0: pick a free one)", "127.0.0.1:7733");
  flags.SetEnv("listen", "SDFARM_LISTEN");
  flags.Add("port-file", "FILE", "write the port served on to FILE once serving");
  flags.Add("redis-url", "URL", "Redis holding the queues and sweep state: redis://[:password@]host[:port][/db]",
            "redis://127.0.0.1:6379");
  flags.SetEnv("redis-url", "SDFARM_REDIS_URL");
  flags.Add("worker-redis-url", "URL", "ignored (deprecated): workers no longer reach Redis; the coordinator "
            "hands out their jobs");
  flags.SetEnv("worker-redis-url", "SDFARM_WORKER_REDIS_URL");
  flags.Add("output-root", "DIR", "sweep folders are created here", "sdfarm-out");
  flags.SetEnv("output-root", "SDFARM_OUTPUT_ROOT");
  flags.Add("client-token", "TOKEN", "bearer token clients must present");
  flags.SetEnv("client-token", "SDFARM_CLIENT_TOKEN");
  flags.Add("client-token-file", "FILE", "read the client token from FILE");
  flags.Add("worker-token", "TOKEN", "bearer token workers must present (must differ from the client token)");
  flags.SetEnv("worker-token", "SDFARM_WORKER_TOKEN");
  flags.Add("worker-token-file", "FILE", "read the worker token from FILE");
  flags.AddBool("no-auth", "accept calls without tokens (only for a trusted network)");
  flags.AddBool("hold-unfinished",
                "at start-up, pause every unfinished sweep and take its jobs out of the queues until a client "
                "resumes it (what sdfarm local uses)");
  flags.Add("tls-cert", "PEM", "serve TLS with this certificate chain (needs --tls-key)");
  flags.SetEnv("tls-cert", "SDFARM_TLS_CERT");
  flags.Add("tls-key", "PEM", "private key of --tls-cert");
  flags.SetEnv("tls-key", "SDFARM_TLS_KEY");
  flags.Add("lease", "SECONDS", "a job whose worker stays silent this long goes to another worker", "60");
  flags.SetEnv("lease", "SDFARM_LEASE_SECONDS");
  flags.Add("heartbeat-timeout", "SECONDS",
            "a worker without a heartbeat this long is not live (workers send one every 2 s): its rate stops "
            "counting and `sdfarm workers` lists it as lost",
            "15");
  flags.Add("max-attempts", "N", "a job that fails this many times is dead-lettered", "3");
  flags.SetEnv("max-attempts", "SDFARM_MAX_ATTEMPTS");
  flags.Add("job-size", "N", "images per job (a worker renders a job in batches of its own size)", "4");
  flags.Add("window", "N", "jobs of one sweep held in Redis at once (at least 2 per live worker)", "8");
  flags.Add("max-images", "N", "largest sweep accepted", "10000000");
  flags.Add("max-watchers", "N", "concurrent `sdfarm watch` streams accepted", "1000");
  flags.Add("key-prefix", "PREFIX", "prefix of every Redis key", "sdfarm");
  flags.Add("leader-lease", "SECONDS",
            "one coordinator per farm: the lease this coordinator holds in Redis (<prefix>:leader), renewed every "
            "third of it; a coordinator started while another holds it waits this long (plus 2 s) for it to end "
            "(a killed coordinator's lease runs out), then refuses to start",
            "10");
  flags.SetEnv("leader-lease", "SDFARM_LEADER_LEASE_SECONDS");
  flags.Add("max-unfinished-sweeps-per-token", "N", "running or paused sweeps one client token may have (0: no limit)",
            "1000");
  flags.Add("max-waiting-sweeps-per-token", "N",
            "of those, sweeps for models no live worker serves (submitted with --wait-for-workers; 0: no limit)",
            "100");
  flags.Add("max-watchers-per-token", "N", "`sdfarm watch` streams one client token may hold open (0: no limit)",
            "500");
  flags.Add("max-threads", "N",
            "handler threads: every call in progress (a report stream, a watch) holds one; beyond this, new calls "
            "are refused with RESOURCE_EXHAUSTED",
            "1500");
  flags.Add("max-streams-per-connection", "N", "concurrent calls on one connection", "1000");
  flags.Add("idle-connection-timeout", "SECONDS", "a connection without any call for this long is closed", "300");
  flags.Add("report-idle-timeout", "SECONDS",
            "a worker's report stream that sends nothing for this long is cancelled (workers send telemetry "
            "every step)",
            "300");
  flags.Add("health-probe-interval", "SECONDS",
            "every SECONDS, check (grpc.health.v1 on a new connection to itself) that the listener still "
            "accepts; 0: never",
            "5");
  flags.Add("health-probe-failures", "N",
            "after N failed self-checks in a row, log why and exit with status 4 so a supervisor restarts it", "6");
  flags.Add("health-check", "HOST:PORT",
            "do not serve: check that the coordinator at HOST:PORT answers its health check (exit 0) or not "
            "(exit 1), for a supervisor's liveness probe (with --tls-cert: verify TLS with that certificate)");
  flags.SetEpilog(
      "Examples:\n"
      "  SDFARM_CLIENT_TOKEN=$(cat client.token) SDFARM_WORKER_TOKEN=$(cat worker.token) \\\n"
      "    sdfarm-coordinator --listen 0.0.0.0:7733 --redis-url redis://:secret@redis:6379 \\\n"
      "      --output-root /data/sweeps --tls-cert server.pem --tls-key server.key\n"
      "  sdfarm-coordinator --no-auth --listen 127.0.0.1:0 --port-file /tmp/port   # local testing\n\n"
      "One coordinator per farm: it refuses to start when another holds the output root (a lock file\n"
      "there), the port, or the leader lease in Redis (same Redis and --key-prefix). Exit status 1 on\n"
      "errors at start, 2 on bad flags, 3 when another coordinator takes over the lease while this one\n"
      "runs (it stops writing at once), 4 when its listener stopped accepting (the self-check; restart it).\n");
  if (auto s = flags.Parse(argc, argv); !s.ok()) return Fail(s.message() + "\n" + flags.Usage(), 2);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (flags.Has("health-check")) return HealthCheck(flags);

  // gRPC 1.51 stops accepting for good once it runs out of descriptors.
  if (auto limit = sdfarm::coordinator::RaiseFileLimit(); limit.ok()) {
    std::fprintf(stderr, "%s sdfarm-coordinator: file descriptor limit %llu%s\n", sdfarm::LogTimestamp().c_str(),
                 static_cast<unsigned long long>(limit->now),
                 limit->now != limit->before
                     ? absl::StrCat(" (raised from ", limit->before, " to the hard limit)").c_str()
                     : " (the hard limit)");
  } else {
    std::fprintf(stderr, "%s sdfarm-coordinator: warning: %s\n", sdfarm::LogTimestamp().c_str(),
                 std::string(limit.status().message()).c_str());
  }

  sdfarm::coordinator::CoordinatorOptions opt;
  auto redis = sdfarm::ParseRedisUrl(flags.Get("redis-url"));
  if (!redis.ok()) return Fail(std::string(redis.status().message()), 2);
  opt.redis = *redis;
  if (flags.Has("worker-redis-url")) {
    std::fprintf(stderr, "sdfarm-coordinator: warning: --worker-redis-url (SDFARM_WORKER_REDIS_URL) is ignored: "
                         "workers no longer reach Redis\n");
  }
  opt.output_root = flags.Get("output-root");
  auto ct = Token(flags, "client-token");
  if (!ct.ok()) return Fail(std::string(ct.status().message()), 2);
  auto wt = Token(flags, "worker-token");
  if (!wt.ok()) return Fail(std::string(wt.status().message()), 2);
  opt.client_token = *ct;
  opt.worker_token = *wt;
  opt.no_auth = flags.GetBool("no-auth");
  opt.hold_unfinished = flags.GetBool("hold-unfinished");
  auto lease = flags.GetDouble("lease", 1, 86400);
  auto attempts = flags.GetInt("max-attempts", 1, 100);
  auto job_size = flags.GetInt("job-size", 1, 256);
  auto window = flags.GetInt("window", 1, 100000);
  auto max_images = flags.GetInt("max-images", 1, INT64_MAX);
  auto max_watchers = flags.GetInt("max-watchers", 1, 1000000);
  auto heartbeat_timeout = flags.GetDouble("heartbeat-timeout", 3, 3600);
  auto leader_lease = flags.GetDouble("leader-lease", 1, 3600);
  auto max_threads = flags.GetInt("max-threads", 16, 100000);
  auto max_streams = flags.GetInt("max-streams-per-connection", 1, 100000);
  auto idle_connection = flags.GetDouble("idle-connection-timeout", 1, 86400);
  auto report_idle = flags.GetDouble("report-idle-timeout", 1, 86400);
  auto probe_interval = flags.GetDouble("health-probe-interval", 0, 3600);
  auto probe_failures = flags.GetInt("health-probe-failures", 1, 1000);
  auto token_sweeps = flags.GetInt("max-unfinished-sweeps-per-token", 0, 100000000);
  auto token_waiting = flags.GetInt("max-waiting-sweeps-per-token", 0, 100000000);
  auto token_watchers = flags.GetInt("max-watchers-per-token", 0, 1000000);
  for (const auto* s : {&leader_lease.status(), &heartbeat_timeout.status(), &lease.status(), &attempts.status(),
                        &job_size.status(), &window.status(), &max_images.status(), &max_watchers.status(),
                        &max_threads.status(), &max_streams.status(), &idle_connection.status(),
                        &report_idle.status(), &probe_interval.status(), &probe_failures.status(),
                        &token_sweeps.status(), &token_waiting.status(), &token_watchers.status()}) {
    if (!s->ok()) return Fail(s->message(), 2);
  }
  opt.report_idle_timeout = absl::Seconds(*report_idle);
  opt.token_limits.max_unfinished_sweeps = static_cast<int>(*token_sweeps);
  opt.token_limits.max_waiting_sweeps = static_cast<int>(*token_waiting);
  opt.token_limits.max_watchers = static_cast<int>(*token_watchers);
  sdfarm::coordinator::ListenerLimits limits;
  limits.max_threads = static_cast<int>(*max_threads);
  limits.max_streams_per_connection = static_cast<int>(*max_streams);
  limits.max_connection_idle = absl::Seconds(*idle_connection);
  opt.lease = absl::Seconds(*lease);
  opt.heartbeat_timeout = absl::Seconds(*heartbeat_timeout);
  opt.leader_lease = absl::Seconds(*leader_lease);
  opt.max_attempts = static_cast<int>(*attempts);
  opt.job_size = static_cast<int>(*job_size);
  opt.window = static_cast<int>(*window);
  opt.limits.max_images = *max_images;
  opt.max_watchers = static_cast<int>(*max_watchers);
  opt.key_prefix = flags.Get("key-prefix");
  if (flags.Has("tls-cert") != flags.Has("tls-key")) return Fail("--tls-cert and --tls-key go together", 2);

  // Signals are taken by a thread with sigwait, so no handler runs async.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto coordinator = sdfarm::coordinator::Coordinator::Create(opt);
  if (!coordinator.ok()) return Fail(coordinator.status().ToString());

  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (flags.Has("tls-cert")) {
    auto cert = sdfarm::ReadSmallFile(flags.Get("tls-cert"));
    auto key = sdfarm::ReadSmallFile(flags.Get("tls-key"));
    if (!cert.ok()) return Fail(std::string(cert.status().message()));
    if (!key.ok()) return Fail(std::string(key.status().message()));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    creds = grpc::SslServerCredentials(ssl);
  }
  grpc::EnableDefaultHealthCheckService(true);  // grpc.health.v1, for the self-probe and supervisors
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(flags.Get("listen"), creds, &port);
  // gRPC sets SO_REUSEPORT by default: a second coordinator would then share
  // the port (and the workers) silently. Without it, its bind fails.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService((*coordinator)->client_service());
  builder.RegisterService((*coordinator)->worker_service());
  sdfarm::coordinator::ApplyListenerLimits(limits, &builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Fail("cannot serve on " + flags.Get("listen") +
                " (address in use, e.g. by another coordinator, or invalid)");
  }
  std::fprintf(stderr, "%s sdfarm-coordinator: serving on port %d%s (%s), output root %s, Redis %s:%d\n", sdfarm::LogTimestamp().c_str(), port,
               flags.Has("tls-cert") ? " with TLS" : "", opt.no_auth ? "no auth" : "bearer tokens",
               opt.output_root.c_str(), opt.redis.host.c_str(), opt.redis.port);
  // Loud, not fatal: a trusted private network may be meant.
  if (!sdfarm::coordinator::IsLoopbackListenAddress(flags.Get("listen"))) {
    if (opt.no_auth) {
      std::fprintf(stderr,
                   "%s sdfarm-coordinator: WARNING: --no-auth on %s, an address other hosts can reach: anyone who "
                   "can connect may submit, cancel and delete sweeps, read every image, and report images as a "
                   "worker. Use tokens (and --tls-cert), or listen on 127.0.0.1.\n",
                   sdfarm::LogTimestamp().c_str(), flags.Get("listen").c_str());
    } else if (!flags.Has("tls-cert")) {
      std::fprintf(stderr,
                   "%s sdfarm-coordinator: WARNING: bearer tokens over plaintext (no --tls-cert) on %s, an address "
                   "other hosts can reach: anyone on the network path can read the tokens and the images. Serve "
                   "TLS (--tls-cert, --tls-key), or listen on 127.0.0.1.\n",
                   sdfarm::LogTimestamp().c_str(), flags.Get("listen").c_str());
    }
  }
  if (flags.Has("port-file")) {
    const std::string path = flags.Get("port-file");
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp);
      out << port << "\n";
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) return Fail("cannot write " + path + ": " + ec.message());
  }

  std::unique_ptr<sdfarm::coordinator::ListenerProbe> probe;
  if (*probe_interval > 0) {
    sdfarm::coordinator::ListenerProbeOptions po;
    po.address = sdfarm::coordinator::ProbeAddress(flags.Get("listen"), port);
    po.interval = absl::Seconds(*probe_interval);
    po.max_failures = static_cast<int>(*probe_failures);
    auto probe_creds = ProbeCredentials(flags);
    if (!probe_creds.ok()) return Fail(std::string(probe_creds.status().message()));
    po.creds = *probe_creds;
    probe = std::make_unique<sdfarm::coordinator::ListenerProbe>(po, [po](const absl::Status& why) {
      std::fprintf(stderr,
                   "%s sdfarm-coordinator: error: the listener no longer answers its health check on %s (%d checks "
                   "in a row; last: %s); exiting with status 4 so that a supervisor restarts the coordinator\n",
                   sdfarm::LogTimestamp().c_str(), po.address.c_str(), po.max_failures, why.ToString().c_str());
      g_listener_dead.store(true);
      kill(getpid(), SIGTERM);
    });
  }

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "%s sdfarm-coordinator: %s: shutting down\n", sdfarm::LogTimestamp().c_str(),
               g_listener_dead.load() ? "listener dead" : sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (probe) probe->Stop();
  (*coordinator)->Shutdown();  // ends watch streams first, so the server can drain
  // In-flight calls get 3 s; workers resend unacknowledged reports anyway.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(3));
  server->Wait();
  std::fprintf(stderr, "%s sdfarm-coordinator: stopped\n", sdfarm::LogTimestamp().c_str());
  return g_listener_dead.load() ? kExitListenerDead : 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
