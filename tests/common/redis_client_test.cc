// RedisClient against real redis-server processes (tests/common/redis_server_fixture.h):
// URL parsing, reply conversion, binary safety, errors, AUTH, deadlines,
// reconnects after restarts and crashes, CheckNoEviction.
#include "common/redis_client.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "tests/common/redis_server_fixture.h"

namespace sdfarm {
namespace {

using ::sdfarm::testing::RedisServer;
using ::sdfarm::testing::RedisServerOptions;

std::unique_ptr<RedisServer> StartServer(RedisServerOptions opts = {}) {
  auto server = RedisServer::Start(std::move(opts));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

std::unique_ptr<RedisClient> ConnectTo(const RedisServer& server) {
  auto client = RedisClient::Connect(server.client_options());
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::move(*client) : nullptr;
}

TEST(ParseRedisUrl, GoodUrls) {
  auto o = ParseRedisUrl("redis://localhost");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->host, "localhost");
  EXPECT_EQ(o->port, 6379);
  EXPECT_EQ(o->db, 0);
  EXPECT_EQ(o->password, "");

  o = ParseRedisUrl("redis://:s3cr@t@10.0.0.5:6380/2");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->host, "10.0.0.5");
  EXPECT_EQ(o->port, 6380);
  EXPECT_EQ(o->db, 2);
  EXPECT_EQ(o->username, "");
  EXPECT_EQ(o->password, "s3cr@t");

  o = ParseRedisUrl("redis://farm:pw@redis.internal:7000/");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->username, "farm");
  EXPECT_EQ(o->password, "pw");
  EXPECT_EQ(o->host, "redis.internal");
  EXPECT_EQ(o->port, 7000);
  EXPECT_EQ(o->db, 0);

  o = ParseRedisUrl("redis://[::1]:6390/15");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->host, "::1");
  EXPECT_EQ(o->port, 6390);
  EXPECT_EQ(o->db, 15);
}

TEST(ParseRedisUrl, BadUrls) {
  for (const char* url :
       {"", "localhost:6379", "http://localhost", "rediss://localhost", "redis://", "redis://:6379",
        "redis://host:", "redis://host:0", "redis://host:65536", "redis://host:12ab", "redis://host/x",
        "redis://host/-1", "redis://password@host", "redis://:@host", "redis://[::1", "redis://host?db=1"}) {
    auto o = ParseRedisUrl(url);
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << url;
  }
}

TEST(RedisClient, RepliesOfEveryKind) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(*server);
  ASSERT_NE(c, nullptr);

  auto r = c->Command({"SET", "k", "v"});  // status reply
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->is_string());
  EXPECT_EQ(*r->AsString(), "OK");

  r = c->Command({"GET", "k"});  // bulk string
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r->AsString(), "v");

  r = c->Command({"GET", "missing"});  // nil
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->is_nil());
  EXPECT_FALSE(r->AsString().ok());
  EXPECT_TRUE(r->array().empty());

  r = c->Command({"INCRBY", "n", "-41"});  // integer
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->is_integer());
  EXPECT_EQ(*r->AsInt(), -41);
  EXPECT_FALSE(r->AsString().ok());

  r = c->Command({"GET", "n"});  // numbers as strings convert too
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r->AsInt(), -41);

  ASSERT_TRUE(c->Command({"RPUSH", "l", "a", "b"}).ok());
  r = c->Command({"LRANGE", "l", "0", "-1"});  // array
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->is_array());
  ASSERT_EQ(r->array().size(), 2u);
  EXPECT_EQ(r->array()[1].str(), "b");
  EXPECT_FALSE(r->AsInt().ok());

  // Nested arrays, and an error nested in EXEC's reply stays a value.
  ASSERT_TRUE(c->Command({"MULTI"}).ok());
  ASSERT_TRUE(c->Command({"LRANGE", "l", "0", "0"}).ok());
  ASSERT_TRUE(c->Command({"INCR", "l"}).ok());  // queued; fails at EXEC: WRONGTYPE
  r = c->Command({"EXEC"});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->array().size(), 2u);
  EXPECT_EQ(r->array()[0].array()[0].str(), "a");
  EXPECT_TRUE(r->array()[1].is_error());
  EXPECT_NE(r->array()[1].str().find("WRONGTYPE"), std::string::npos);
  EXPECT_NE(r->DebugString().find("(error) WRONGTYPE"), std::string::npos);
}

TEST(RedisClient, BinarySafeArgumentsAndValues) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(*server);
  ASSERT_NE(c, nullptr);
  std::string key("k\0ey", 4);
  std::string value;
  for (int i = 0; i < 256; ++i) value.push_back(static_cast<char>(i));
  value += std::string(100000, '\0');  // larger than one socket read
  ASSERT_TRUE(c->Command({"SET", key, value}).ok());
  auto r = c->Command({"GET", key});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str(), value);
  EXPECT_TRUE(c->Command({"GET", "k"})->is_nil());  // the key is not cut at the NUL
  auto empty = c->Command({"SET", "e", ""});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(c->Command({"GET", "e"})->str(), "");
  EXPECT_TRUE(c->Command({"GET", "e"})->is_string());
}

TEST(RedisClient, ErrorRepliesBecomeStatusesAndTheConnectionStaysUsable) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(*server);
  ASSERT_NE(c, nullptr);
  auto r = c->Command({"NOSUCHCOMMAND", "x"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("unknown command"), std::string::npos) << r.status();

  ASSERT_TRUE(c->Command({"SET", "s", "v"}).ok());
  r = c->Command({"LPUSH", "s", "x"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("WRONGTYPE"), std::string::npos);

  r = c->Command({"XREADGROUP", "GROUP", "g", "c", "STREAMS", "nostream", ">"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();  // NOGROUP

  ASSERT_TRUE(c->Command({"XGROUP", "CREATE", "st", "g", "0", "MKSTREAM"}).ok());
  r = c->Command({"XGROUP", "CREATE", "st", "g", "0", "MKSTREAM"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAlreadyExists) << r.status();  // BUSYGROUP

  EXPECT_EQ(c->Command({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*c->Command({"PING"})->AsString(), "PONG");
  EXPECT_EQ(c->connects(), 1);
}

TEST(RedisClient, PasswordAuth) {
  RedisServerOptions opts;
  opts.password = "correct horse";
  auto server = StartServer(opts);
  ASSERT_NE(server, nullptr);

  auto good = RedisClient::Connect(server->client_options());
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_TRUE((*good)->Command({"SET", "a", "1"}).ok());

  auto from_url = ParseRedisUrl(server->url() + "/3");
  ASSERT_TRUE(from_url.ok()) << from_url.status();
  auto db3 = RedisClient::Connect(*from_url);
  ASSERT_TRUE(db3.ok()) << db3.status();
  EXPECT_TRUE((*db3)->Command({"GET", "a"})->is_nil());  // SELECT 3 happened
  auto info = (*db3)->Command({"CLIENT", "INFO"});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_NE(info->str().find(" db=3 "), std::string::npos) << info->str();

  RedisOptions wrong = server->client_options();
  wrong.password = "wrong";
  auto bad = RedisClient::Connect(wrong);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnauthenticated) << bad.status();
  EXPECT_EQ(bad.status().message().find("wrong"), std::string::npos) << "password leaked: " << bad.status();

  RedisOptions none = server->client_options();
  none.password.clear();
  // The server accepts the TCP connection but no command: Connect finds out
  // (PING) rather than leaving it to the first command.
  auto anon = RedisClient::Connect(none);
  EXPECT_EQ(anon.status().code(), absl::StatusCode::kUnauthenticated) << anon.status();
  EXPECT_NE(anon.status().message().find("NOAUTH"), std::string::npos) << anon.status();
}

TEST(RedisClient, UnreachableServerIsUnavailableWithinTheConnectTimeout) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  RedisOptions opts = server->client_options();
  ASSERT_TRUE(server->Stop().ok());
  absl::Time start = absl::Now();
  auto c = RedisClient::Connect(opts);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  EXPECT_LT(absl::Now() - start, opts.connect_timeout + absl::Seconds(1));
}

TEST(RedisClient, ReconnectsAfterRestart) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(*server);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Command({"SET", "k", "before"}).ok());
  ASSERT_TRUE(server->Restart().ok());
  // The closed connection is noticed before sending, so this call succeeds.
  auto r = c->Command({"GET", "k"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str(), "before");  // AOF reloaded
  EXPECT_EQ(c->connects(), 2);
}

TEST(RedisClient, ReconnectsAfterKillAndRestart) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(*server);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Command({"SET", "k", "fsynced"}).ok());
  ASSERT_TRUE(server->Kill().ok());

  // While it is down: Unavailable, quickly, every time.
  auto down = c->Command({"GET", "k"});
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  down = c->Command({"GET", "k"});
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();

  ASSERT_TRUE(server->Restart().ok());
  auto r = c->Command({"GET", "k"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str(), "fsynced");  // appendfsync always: the write survived SIGKILL
}

TEST(RedisClient, BrokenConnectionMidCommandIsUnavailableThenRecovers) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(*server);
  auto killer = ConnectTo(*server);
  ASSERT_NE(c, nullptr);
  ASSERT_NE(killer, nullptr);
  auto id = c->Command({"CLIENT", "ID"});
  ASSERT_TRUE(id.ok());
  // Kill the connection from the server side while c is blocked in BLPOP.
  std::thread t([&] {
    absl::SleepFor(absl::Milliseconds(200));
    (void)killer->Command({"CLIENT", "KILL", "ID", std::to_string(*id->AsInt())});
  });
  auto r = c->CommandWithTimeout({"BLPOP", "nothing", "5"}, absl::Seconds(10));
  t.join();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  auto again = c->Command({"PING"});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(c->connects(), 2);
}

TEST(RedisClient, BlockingCommandsHonorDeadlines) {
  auto server = StartServer();
  ASSERT_NE(server, nullptr);
  auto c = ConnectTo(*server);
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Command({"XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"}).ok());

  // The server-side block ends first: a nil reply.
  absl::Time start = absl::Now();
  auto r = c->CommandWithTimeout({"XREADGROUP", "GROUP", "g", "w", "BLOCK", "200", "STREAMS", "s", ">"},
                                 absl::Seconds(5));
  absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->is_nil()) << r->DebugString();
  EXPECT_GE(took, absl::Milliseconds(190));
  EXPECT_LT(took, absl::Seconds(2));

  // The client deadline ends first: DeadlineExceeded, on time, and the
  // connection is replaced so the late reply cannot be misread.
  start = absl::Now();
  r = c->CommandWithTimeout({"BLPOP", "nothing", "0"}, absl::Milliseconds(300));
  took = absl::Now() - start;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  EXPECT_GE(took, absl::Milliseconds(290));
  EXPECT_LT(took, absl::Seconds(2));
  ASSERT_TRUE(c->Command({"RPUSH", "nothing", "late"}).ok());
  auto pop = c->Command({"LPOP", "nothing"});  // the abandoned BLPOP did not take it
  ASSERT_TRUE(pop.ok()) << pop.status();
  EXPECT_EQ(pop->str(), "late");
}

TEST(RedisClient, CheckNoEviction) {
  auto ok_server = StartServer();
  ASSERT_NE(ok_server, nullptr);
  auto c = ConnectTo(*ok_server);
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->CheckNoEviction().ok()) << c->CheckNoEviction();

  RedisServerOptions lru;
  lru.maxmemory_policy = "allkeys-lru";
  auto lru_server = StartServer(lru);
  ASSERT_NE(lru_server, nullptr);
  auto c2 = ConnectTo(*lru_server);
  ASSERT_NE(c2, nullptr);
  absl::Status s = c2->CheckNoEviction();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("allkeys-lru"), std::string::npos) << s;
  EXPECT_NE(s.message().find("noeviction"), std::string::npos) << s;
}

}  // namespace
}  // namespace sdfarm
