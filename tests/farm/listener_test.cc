// The coordinator's listener survives what used to kill it (security
// finding: ~1,000 idle HTTP/2 connections under `ulimit -n 1024` exhausted
// its file descriptors and gRPC 1.51's accept loop never accepted again):
// started with a soft file limit of 1024, it raises the limit, serves a
// sweep to completion with 2,000 idle connections open, and still accepts
// once they close. Report streams that go quiet are cancelled, malformed
// ones refused, and `--health-check` answers for a supervisor.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/hostile_worker.h"

namespace sdfarm::testing {
namespace {

namespace pb = sdfarm::v1;
using json = nlohmann::json;

json Spec(const std::string& name, const std::string& seeds) {
  return {{"name", name},           {"model", "tiny-sd"}, {"prompts", {"a red fox"}}, {"seeds", seeds},
          {"guidance_scales", {7.5}}, {"steps", 2},       {"sizes", {"64x64"}}};
}

int PortOf(const std::string& address) {
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) << address;
  return port;
}

// A TCP connection that sends the HTTP/2 client preface, then nothing; -1
// when it cannot connect.
int IdleHttp2Connection(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  static const char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::send(fd, kPreface, sizeof(kPreface) - 1, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof(kPreface) - 1)) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// The soft file limit of processes started meanwhile (the hard limit stays).
class SoftFileLimit {
 public:
  explicit SoftFileLimit(rlim_t soft) {
    ::getrlimit(RLIMIT_NOFILE, &saved_);
    struct rlimit low = saved_;
    low.rlim_cur = soft;
    ::setrlimit(RLIMIT_NOFILE, &low);
  }
  ~SoftFileLimit() { Restore(); }
  void Restore() { ::setrlimit(RLIMIT_NOFILE, &saved_); }
  rlim_t hard() const { return saved_.rlim_max; }

 private:
  struct rlimit saved_ {};
};

RunResult HealthCheck(const std::string& address) {
  return RunProgram({SDFARM_COORDINATOR_BIN, "--health-check", address}, {}, absl::Seconds(30));
}

TEST(Listener, TwoThousandIdleConnectionsUnderALowFileLimitThenASweepCompletesAndNewCallsAreAccepted) {
  constexpr int kIdle = 2000;
  SoftFileLimit limit(1024);
  ASSERT_GT(limit.hard(), rlim_t{kIdle * 2}) << "the hard file limit is too low for this test";
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:1"}));
  limit.Restore();  // this process holds the idle connections
  EXPECT_NE(farm->CoordinatorLog().find(absl::StrCat("file descriptor limit ", limit.hard(),
                                                     " (raised from 1024 to the hard limit)")),
            std::string::npos)
      << farm->CoordinatorLog();

  const int port = PortOf(farm->address());
  std::vector<int> idle;
  for (int i = 0; i < kIdle; ++i) {
    const int fd = IdleHttp2Connection(port);
    ASSERT_GE(fd, 0) << "connection " << i << " refused";
    idle.push_back(fd);
  }
  RunResult health = HealthCheck(farm->address());
  EXPECT_EQ(health.exit_code, 0) << health.output;

  // A normal sweep, with the idle connections still open.
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(Spec("busy", "0-15").dump()));
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(farm->StartWorker().ok());
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus done, farm->WaitForState(id, pb::DONE, absl::Minutes(3)));
  EXPECT_EQ(done.done(), 16);
  EXPECT_EQ(ReadManifest(farm->output_root() + "/busy").size(), 16u);

  for (int fd : idle) ::close(fd);
  // New connections are accepted: a fresh channel, and the health check.
  auto channel = grpc::CreateChannel(farm->address(), grpc::InsecureChannelCredentials());
  auto stub = pb::ClientService::NewStub(channel);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(20));
  pb::SweepRef ref;
  ref.set_sweep("busy");
  pb::SweepStatus status;
  grpc::Status s = stub->Status(&ctx, ref, &status);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(status.state(), pb::DONE);
  health = HealthCheck(farm->address());
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_NE(health.output.find("serving"), std::string::npos) << health.output;
}

TEST(Listener, HealthCheckFailsWhenNothingServes) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:1"}));
  const std::string address = farm->address();
  ASSERT_TRUE(farm->StopCoordinator().ok());
  RunResult health = HealthCheck(address);
  EXPECT_EQ(health.exit_code, 1) << health.output;
  EXPECT_NE(health.output.find("is not healthy"), std::string::npos) << health.output;
}

TEST(Listener, AQuietReportStreamIsCancelledAndMalformedReportsAreRefused) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0,
                                                    .engine = "synthetic:1",
                                                    .coordinator_args = {"--report-idle-timeout", "2"}}));
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(Spec("quiet", "0-3").dump()));
  HostileWorker evil(farm->channel(), farm->worker_token());
  pb::RegisterResponse reg;
  ASSERT_TRUE(evil.Register("evil", "tiny-sd", "synthetic", &reg).ok());
  FARM_ASSERT_OK_AND_ASSIGN(pb::ClaimedJob job, evil.ClaimJob(absl::Seconds(30)));

  pb::JobReport step = HostileWorker::Envelope(job);
  step.mutable_step()->set_step(1);
  step.mutable_step()->set_total_steps(2);
  // Without the idle deadline the call would end only at its own 60 s
  // deadline (DEADLINE_EXCEEDED); the coordinator cancels it first.
  pb::ReportAck ack;
  grpc::Status st = evil.ReportThenIdle({step}, &ack, absl::Seconds(60));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << st.error_message();
  // (The client sees the cancellation before the handler has returned and logged it.)
  const std::string cancelled_line = "report stream cancelled after 2s without a message";
  for (int i = 0; i < 100 && farm->CoordinatorLog().find(cancelled_line) == std::string::npos; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(farm->CoordinatorLog().find(cancelled_line), std::string::npos) << farm->CoordinatorLog();

  for (auto [field, value, message] : std::vector<std::tuple<int, std::string, std::string>>{
           {0, "nonsense", "malformed job id"}, {1, "12-x", "malformed job stream id"}}) {
    pb::JobReport bad = step;
    if (field == 0) bad.set_job_id(value);
    if (field == 1) bad.set_job_stream_id(value);
    st = evil.Report({bad}, &ack);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << value;
    EXPECT_NE(st.error_message().find(message), std::string::npos) << st.error_message();
  }
  // The worker is the session's: another worker id (a path, here) is refused.
  pb::JobReport other = step;
  other.set_worker_id("../w");
  st = evil.Report({other}, &ack);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_NE(st.error_message().find("this session belongs to worker evil, not ../w"), std::string::npos)
      << st.error_message();
  // A report about a sweep the coordinator does not know is discarded.
  pb::JobReport unknown = step;
  unknown.set_job_id("0123456789abcdef/0");
  ack.Clear();
  st = evil.Report({unknown}, &ack);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(ack.accepted());
}

}  // namespace
}  // namespace sdfarm::testing
