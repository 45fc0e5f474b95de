// ListenerProbe and CheckHealth (coordinator/listener_probe.h,
// listener_limits.h) against a real gRPC server with the standard health
// service: healthy while it serves, and on_dead once it stops accepting.
#include "coordinator/listener_probe.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "coordinator/listener_limits.h"
#include "sdfarm.grpc.pb.h"

namespace sdfarm::coordinator {
namespace {

// A sync server needs one sync service (its methods all UNIMPLEMENTED here).
sdfarm::v1::ClientService::Service unimplemented;

std::unique_ptr<grpc::Server> StartServer(int* port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.RegisterService(&unimplemented);
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
  ApplyListenerLimits(ListenerLimits{}, &builder);
  return builder.BuildAndStart();
}

TEST(ListenerProbe, HealthyWhileServingAndDeadOnceTheListenerIsGone) {
  int port = 0;
  auto server = StartServer(&port);
  ASSERT_TRUE(server && port > 0);
  const std::string address = ProbeAddress("0.0.0.0:" + std::to_string(port), port);
  EXPECT_EQ(address, "127.0.0.1:" + std::to_string(port));
  auto creds = grpc::InsecureChannelCredentials();
  EXPECT_TRUE(CheckHealth(address, creds, absl::Seconds(10)).ok());

  absl::Notification dead;
  absl::Status why;
  ListenerProbe probe({.address = address, .creds = creds, .interval = absl::Milliseconds(50),
                       .timeout = absl::Seconds(2), .max_failures = 3},
                      [&](const absl::Status& s) {
                        why = s;
                        dead.Notify();
                      });
  // Serving: no verdict while several checks pass.
  EXPECT_FALSE(dead.WaitForNotificationWithTimeout(absl::Milliseconds(500)));
  server->Shutdown();
  server->Wait();
  ASSERT_TRUE(dead.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_FALSE(why.ok());
  probe.Stop();
}

TEST(ListenerLimits, LoopbackAddressesAreTold) {
  EXPECT_TRUE(IsLoopbackListenAddress("127.0.0.1:7733"));
  EXPECT_TRUE(IsLoopbackListenAddress("localhost:7733"));
  EXPECT_TRUE(IsLoopbackListenAddress("[::1]:7733"));
  EXPECT_FALSE(IsLoopbackListenAddress("0.0.0.0:7733"));
  EXPECT_FALSE(IsLoopbackListenAddress("[::]:7733"));
  EXPECT_FALSE(IsLoopbackListenAddress("10.0.0.5:7733"));
  EXPECT_EQ(ProbeAddress("[::]:0", 99), "[::1]:99");
}

TEST(ListenerLimits, TheFileLimitIsRaisedToTheHardLimit) {
  auto limit = RaiseFileLimit();
  ASSERT_TRUE(limit.ok()) << limit.status();
  EXPECT_EQ(limit->now, limit->hard);
  EXPECT_GE(limit->now, limit->before);
}

}  // namespace
}  // namespace sdfarm::coordinator
