// The farm's edges against hostile or careless input, on a real farm: every
// limit refuses with a clear error and creates nothing, while the farm goes
// on serving everyone else; watch streams beyond --max-watchers are refused
// until one ends; Redis with a password works end to end without workers
// ever seeing it (they have no Redis access: hostile_worker_test.cc), the
// workers ride out Redis being down for a while, and a wrong or missing
// password stops the coordinator with an error that names the problem
// without echoing any password.
// (Tokens and TLS: farm_test.cc and local_and_tls_test.cc.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/redis_client.h"
#include "tests/farm/farm_fixture.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = sdfarm::v1;
using json = nlohmann::json;

json SmallSpec(const std::string& name) {
  return {{"name", name},           {"model", "tiny-sd"}, {"prompts", {"a red fox"}}, {"seeds", "0-3"},
          {"guidance_scales", {7.5}}, {"steps", 3},       {"sizes", {"64x64"}}};
}

grpc::Status Submit(Farm* farm, const std::string& spec_json, bool dry_run, pb::SubmitResponse* resp) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(30));
  pb::SubmitRequest req;
  req.set_spec_json(spec_json);
  req.set_dry_run(dry_run);
  return farm->client()->Submit(&ctx, req, resp);
}

int NumSweeps(Farm* farm) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
  pb::ListResponse list;
  grpc::Status s = farm->client()->List(&ctx, pb::ListRequest(), &list);
  return s.ok() ? list.sweeps_size() : -1;
}

struct BadSpec {
  std::string what;
  json spec;
  std::string message;  // the error must contain this
};

TEST(Security, EveryLimitRefusesWithAClearErrorAndCreatesNothing) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm,
                            Farm::Start({.workers = 0, .coordinator_args = {"--max-images", "1000"}}));
  auto with = [](const std::string& key, json value) {
    json s = SmallSpec("bad");
    s[key] = std::move(value);
    return s;
  };
  std::vector<BadSpec> cases = {
      {"prompt over 4000 characters", with("prompts", {std::string(4001, 'a')}), "limit 4000"},
      {"prompt over 4000 code points", with("prompts", {[] {
                                              std::string s;
                                              for (int i = 0; i < 4001; ++i) s += "\xc3\xa9";  // é
                                              return s;
                                            }()}),
       "limit 4000"},
      {"negative prompt over the limit", with("negative_prompts", {std::string(5000, 'n')}), "limit 4000"},
      {"NUL byte in a prompt", with("prompts", {std::string("a\0b", 3)}), "NUL"},
      {"image wider than 2048", with("sizes", {"4096x512"}), "2048"},
      {"image just over 2048", with("sizes", {"2056x2056"}), "2048"},
      {"image side not a multiple of 8", with("sizes", {"500x512"}), "8"},
      {"zero steps", with("steps", 0), "steps"},
      {"too many steps", with("steps", 1001), "1000"},
      {"sweep over --max-images", with("seeds", "0-1000"), "1000"},
      {"list over 100000 entries", with("seeds", "0-100000"), "100000"},
      {"name with ..", with("name", "../escape"), "output folder"},
      {"name ..", with("name", ".."), "output folder"},
      {"absolute name", with("name", "/etc"), "output folder"},
      {"name with a NUL byte", with("name", std::string("ok\0../../x", 10)), "NUL"},
      {"model name with a slash", with("model", "../tiny-sd"), "model"},
  };
  for (const BadSpec& c : cases) {
    pb::SubmitResponse resp;
    for (bool dry : {true, false}) {
      grpc::Status s = Submit(farm.get(), c.spec.dump(), dry, &resp);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.what << ": " << s.error_message();
      EXPECT_NE(s.error_message().find(c.message), std::string::npos)
          << c.what << ": the error does not say '" << c.message << "': " << s.error_message();
    }
  }
  // Not JSON, not an object, and a spec far over any sensible size.
  for (const std::string& text : {std::string("{\"name\": "), std::string("[1,2]"), std::string("\0\0", 2)}) {
    pb::SubmitResponse resp;
    EXPECT_EQ(Submit(farm.get(), text, false, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    json huge = SmallSpec("huge");
    huge["negative_prompts"] = json::array();
    for (int i = 0; i < 9000; ++i) huge["negative_prompts"].push_back(std::string(3990, 'x'));
    const std::string text = huge.dump();
    ASSERT_GT(text.size(), 32u << 20);
    pb::SubmitResponse resp;
    grpc::Status s = Submit(farm.get(), text, false, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("MiB"), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(NumSweeps(farm.get()), 0);
  EXPECT_FALSE(fs::exists(farm->output_root() + "/../escape"));
  EXPECT_FALSE(fs::exists(farm->output_root() + "/bad"));

  // The limits are inclusive, and the farm serves a good sweep afterwards.
  json edge = SmallSpec("edge");
  edge["prompts"] = {std::string(4000, 'a')};
  edge["seeds"] = "0-999";
  edge["steps"] = 1000;
  edge["sizes"] = {"2048x2048"};
  pb::SubmitResponse resp;
  grpc::Status s = Submit(farm.get(), edge.dump(), /*dry_run=*/true, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.images(), 1000);
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(SmallSpec("good").dump()));
  EXPECT_EQ(NumSweeps(farm.get()), 1);
  EXPECT_TRUE(farm->Status(id).ok());

  // The client reports the coordinator's (or its own) refusal and exits non-zero.
  RunResult r = RunProgram({SDFARM_CLIENT_BIN, "submit", "--name", "cli-big", "--model", "tiny-sd", "--prompt", "x",
                            "--seeds", "0", "--size", "4096x4096"},
                           {{"SDFARM_COORDINATOR", farm->address()}, {"SDFARM_TOKEN", farm->client_token()}},
                           absl::Minutes(1));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("2048"), std::string::npos) << r.output;
  EXPECT_EQ(NumSweeps(farm.get()), 1);
}

// A Watch stream that reads its first event, then holds the stream open
// until Cancel().
class OpenWatch {
 public:
  OpenWatch(Farm* farm, const std::string& sweep) {
    PrepareContext(&ctx_, farm->client_token(), absl::Minutes(2));
    pb::SweepRef ref;
    ref.set_sweep(sweep);
    reader_ = farm->client()->Watch(&ctx_, ref);
    pb::WatchEvent ev;
    first_event_ = reader_->Read(&ev);
  }
  bool got_first_event() const { return first_event_; }
  grpc::Status Finish() {
    if (!finished_) {
      finished_ = true;
      pb::WatchEvent ev;
      while (reader_->Read(&ev)) {
      }
      status_ = reader_->Finish();
    }
    return status_;
  }
  void Cancel() {
    ctx_.TryCancel();
    Finish();
  }
  ~OpenWatch() { Cancel(); }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<pb::WatchEvent>> reader_;
  bool first_event_ = false, finished_ = false;
  grpc::Status status_;
};

TEST(Security, WatchStreamsBeyondTheLimitAreRefusedUntilOneEnds) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .coordinator_args = {"--max-watchers", "3"}}));
  // No workers: the sweep stays RUNNING, so its watch streams stay open.
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(SmallSpec("watched").dump()));
  std::vector<std::unique_ptr<OpenWatch>> open;
  for (int i = 0; i < 3; ++i) {
    open.push_back(std::make_unique<OpenWatch>(farm.get(), id));
    ASSERT_TRUE(open.back()->got_first_event()) << "watch " << i << ": " << open.back()->Finish().error_message();
  }
  OpenWatch fourth(farm.get(), id);
  EXPECT_FALSE(fourth.got_first_event());
  grpc::Status s = fourth.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("too many watchers (3)"), std::string::npos) << s.error_message();

  // The client's watch command says so and exits non-zero (it does not spin).
  RunResult r = RunProgram({SDFARM_CLIENT_BIN, "watch", "watched", "--reconnect-timeout", "3"},
                           {{"SDFARM_COORDINATOR", farm->address()}, {"SDFARM_TOKEN", farm->client_token()}},
                           absl::Minutes(1));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("too many watchers"), std::string::npos) << r.output;

  // Other calls are not affected by the watch limit.
  EXPECT_TRUE(farm->Status(id).ok());

  // Once a stream ends its slot is free again (the coordinator notices a
  // cancelled stream within about a second).
  open.front()->Cancel();
  open.erase(open.begin());
  bool admitted = false;
  for (absl::Time deadline = absl::Now() + absl::Seconds(15); !admitted && absl::Now() < deadline;) {
    auto w = std::make_unique<OpenWatch>(farm.get(), id);
    if (w->got_first_event()) {
      admitted = true;
      open.push_back(std::move(w));
    } else {
      EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
      absl::SleepFor(absl::Milliseconds(200));
    }
  }
  EXPECT_TRUE(admitted) << "no watch slot came free after a stream was cancelled";
}

TEST(Security, RedisWithAPasswordWorksEndToEndAndAWrongPasswordIsAClearError) {
  const std::string password = "correct horse battery staple";
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2,
                                                    .engine = "synthetic:2",
                                                    .redis = {.password = password}}));
  ASSERT_NE(farm->redis()->url().find("correct"), std::string::npos) << "the fixture must hand out the password";
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(SmallSpec("secret").dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(2)));
  EXPECT_EQ(st.done(), 4) << farm->Logs();

  // Workers never get the password (nor any Redis address): they reach only
  // the coordinator, so Redis going away for a while is the coordinator's
  // business. Redis is down for 3 s under the running farm: the workers keep
  // running (their claims fail meanwhile and are retried), and a sweep
  // submitted after it is back completes on the same worker processes.
  for (int i = 0; i < farm->num_workers(); ++i) {
    EXPECT_EQ(farm->WorkerLog(i).find("correct horse"), std::string::npos) << "a worker saw the password";
  }
  ASSERT_TRUE(farm->redis()->Kill().ok());
  absl::SleepFor(absl::Seconds(3));
  ASSERT_TRUE(farm->redis()->Restart().ok());
  FARM_ASSERT_OK_AND_ASSIGN(std::string after, farm->Submit(SmallSpec("after-outage").dump()));
  FARM_ASSERT_OK_AND_ASSIGN(st, farm->WaitForState(after, pb::DONE, absl::Minutes(2)));
  EXPECT_EQ(st.done(), 4) << farm->Logs();
  EXPECT_EQ(farm->RunningWorkers().size(), 2u) << farm->Logs();
  EXPECT_EQ(farm->CoordinatorLog().find("correct horse"), std::string::npos) << "password echoed";

  // Without the password, or with a wrong one, the coordinator stops at
  // start-up with an authentication error; the password never shows.
  const std::string host_port = absl::StrCat("127.0.0.1:", farm->redis()->port());
  const std::string dir = MakeTempDir("redis-auth");
  ASSERT_FALSE(dir.empty());
  for (const std::string& url : {"redis://" + host_port, "redis://:wrong-password@" + host_port}) {
    absl::Time start = absl::Now();
    RunResult c = RunProgram({SDFARM_COORDINATOR_BIN, "--listen", "127.0.0.1:0", "--redis-url", url, "--output-root",
                              dir + "/out", "--no-auth"},
                             {}, absl::Minutes(2));
    EXPECT_NE(c.exit_code, 0) << c.output;
    EXPECT_LT(absl::Now() - start, absl::Seconds(20)) << "the coordinator kept trying a wrong password: " << c.output;
    EXPECT_TRUE(c.output.find("NOAUTH") != std::string::npos || c.output.find("WRONGPASS") != std::string::npos)
        << c.output;
    EXPECT_EQ(c.output.find("wrong-password"), std::string::npos) << "password echoed: " << c.output;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace sdfarm::testing
