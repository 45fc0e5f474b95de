// What a new user meets, with real processes (redis-server, coordinator,
// workers, the sdfarm client): a local run renders only what it was asked
// for, another shell reaches a running local farm, a model nobody serves is
// refused with the served ones named, rates agree between views and count
// from the start of their jobs, jobs in progress show their steps, workers
// that stop leave the list, big seeds stay exact in metadata.jsonl, and long
// prompts are warned about where they are cut.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_util.h"
#include "common/subprocess.h"
#include "tests/farm/farm_fixture.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = sdfarm::v1;
using json = nlohmann::json;

int CountPngs(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) n += e.path().extension() == ".png";
  return n;
}

json Spec(const std::string& name, const std::string& model, const std::string& seeds, int steps = 5) {
  return {{"name", name}, {"model", model}, {"prompt", "a red fox"}, {"seeds", seeds},
          {"size", "64x64"},  {"steps", steps}};
}

// `sdfarm local` with the synthetic engine, as its own process.
std::unique_ptr<Subprocess> StartLocal(const std::string& root, const std::vector<std::string>& args,
                                       const std::vector<std::pair<std::string, std::string>>& env,
                                       const std::string& log) {
  SpawnOptions o;
  o.argv = {SDFARM_CLIENT_BIN, "local", "--output-root", root};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.env = env;
  o.log_file = log;
  auto p = Subprocess::Spawn(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout) {
  for (const absl::Time end = absl::Now() + timeout; absl::Now() < end; absl::SleepFor(absl::Milliseconds(100))) {
    if (done()) return true;
  }
  return done();
}

TEST(LocalMode, ARunRendersOnlyItsSweepListsEarlierOnesAndResumesOrRemovesThem) {
  const std::string dir = MakeTempDir("local-held");
  const std::string root = dir + "/out";
  const std::vector<std::pair<std::string, std::string>> env = {{"HOME", dir}, {"XDG_STATE_HOME", ""}};
  // 1. A slow sweep, interrupted after its first images (Ctrl-C).
  auto first = StartLocal(root,
                          {"--engine", "synthetic:100", "--name", "first", "--prompt", "a", "--seeds", "0-23", "--size",
                           "64x64", "--steps", "4", "--batch-size", "1"},
                          env, dir + "/first.log");
  ASSERT_TRUE(first);
  ASSERT_TRUE(WaitFor([&] { return CountPngs(root + "/first") >= 1; }, absl::Seconds(60))) << ReadFileOrEmpty(dir + "/first.log");
  ASSERT_TRUE(first->Signal(SIGINT).ok());
  EXPECT_EQ(first->Wait(absl::Seconds(60)), 130) << ReadFileOrEmpty(dir + "/first.log");
  const int first_images = CountPngs(root + "/first");
  ASSERT_LT(first_images, 24);

  // 2. Another sweep in the same root: only it is rendered; the first is listed with what to do.
  RunResult second = RunProgram({SDFARM_CLIENT_BIN, "local", "--output-root", root, "--engine", "synthetic:1", "--name",
                                 "second", "--prompt", "b", "--seeds", "0-3", "--size", "64x64", "--steps", "2"},
                                env, absl::Minutes(2));
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_EQ(CountPngs(root + "/second"), 4);
  EXPECT_EQ(CountPngs(root + "/first"), first_images) << "the earlier sweep was rendered by this run";
  EXPECT_NE(second.output.find("1 earlier unfinished sweep in " + root), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("first  " + std::to_string(first_images) + "/24 done"), std::string::npos)
      << second.output;
  EXPECT_NE(second.output.find("--resume first"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("--rm first"), std::string::npos) << second.output;

  // 3. --resume finishes the first sweep, with its stored settings.
  RunResult resumed = RunProgram(
      {SDFARM_CLIENT_BIN, "local", "--output-root", root, "--engine", "synthetic:1", "--resume", "first"}, env,
      absl::Minutes(2));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(CountPngs(root + "/first"), 24);
  EXPECT_EQ(ReadManifest(root + "/first").size(), 24u);
  RunResult bad = RunProgram({SDFARM_CLIENT_BIN, "local", "--output-root", root, "--engine", "synthetic:1", "--resume",
                              "first", "--seeds", "1"},
                             env, absl::Minutes(1));
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--seeds cannot go with --resume"), std::string::npos) << bad.output;

  // 4. --rm drops a sweep and its folder; its name is free again.
  RunResult removed =
      RunProgram({SDFARM_CLIENT_BIN, "local", "--output-root", root, "--rm", "second"}, env, absl::Minutes(1));
  ASSERT_EQ(removed.exit_code, 0) << removed.output;
  EXPECT_NE(removed.output.find("removed sweep"), std::string::npos) << removed.output;
  EXPECT_FALSE(fs::exists(root + "/second"));
  RunResult again = RunProgram({SDFARM_CLIENT_BIN, "local", "--output-root", root, "--engine", "synthetic:1", "--name",
                                "second", "--prompt", "c", "--seeds", "0", "--size", "64x64", "--steps", "2"},
                               env, absl::Minutes(1));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(again.output.find("earlier unfinished"), std::string::npos) << again.output;
}

TEST(LocalMode, OtherShellsReachTheRunningFarmByThemselves) {
  const std::string dir = MakeTempDir("local-reach");
  const std::string root = dir + "/out";
  // The local run and the other commands see the same SDFARM_OUTPUT_ROOT; no
  // --coordinator, no --token anywhere.
  const std::vector<std::pair<std::string, std::string>> env = {
      {"HOME", dir}, {"XDG_STATE_HOME", ""}, {"SDFARM_OUTPUT_ROOT", root}, {"SDFARM_COORDINATOR", ""},
      {"SDFARM_TOKEN", ""}};
  auto local = StartLocal(root,
                          {"--engine", "synthetic:200", "--name", "slow", "--prompt", "a", "--seeds", "0-39", "--size",
                           "64x64", "--steps", "5"},
                          env, dir + "/local.log");
  ASSERT_TRUE(local);
  ASSERT_TRUE(WaitFor([&] { return fs::exists(root + "/.sdfarm-local/farm.json"); }, absl::Seconds(60)))
      << ReadFileOrEmpty(dir + "/local.log");
  EXPECT_EQ(fs::status(root + "/.sdfarm-local/farm.json").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_TRUE(fs::exists(dir + "/.local/state/sdfarm/local-farm.json"));

  RunResult status;
  ASSERT_TRUE(WaitFor(
      [&] {
        status = RunProgram({SDFARM_CLIENT_BIN, "status", "slow"}, env, absl::Minutes(1));
        return status.exit_code == 0;
      },
      absl::Seconds(30)))
      << status.output;
  EXPECT_NE(status.output.find("RUNNING"), std::string::npos) << status.output;
  // The user's latest farm is found from anywhere else too.
  std::vector<std::pair<std::string, std::string>> elsewhere = env;
  elsewhere[2].second = dir + "/nowhere";
  RunResult workers;
  ASSERT_TRUE(WaitFor(
      [&] {
        workers = RunProgram({SDFARM_CLIENT_BIN, "workers"}, elsewhere, absl::Minutes(1));
        return workers.exit_code == 0 && workers.output.find("rendering") != std::string::npos;
      },
      absl::Seconds(30)))
      << workers.output;

  RunResult cancel = RunProgram({SDFARM_CLIENT_BIN, "cancel", "slow"}, env, absl::Minutes(1));
  ASSERT_EQ(cancel.exit_code, 0) << cancel.output;
  EXPECT_EQ(local->Wait(absl::Seconds(60)), 4) << ReadFileOrEmpty(dir + "/local.log");
  EXPECT_FALSE(fs::exists(root + "/.sdfarm-local/farm.json"));
  EXPECT_FALSE(fs::exists(dir + "/.local/state/sdfarm/local-farm.json"));

  // Nothing runs now: a clear error within seconds, not after the 30 s timeout.
  const absl::Time start = absl::Now();
  RunResult gone = RunProgram({SDFARM_CLIENT_BIN, "status", "slow", "--coordinator", "127.0.0.1:1"}, env,
                              absl::Minutes(1));
  EXPECT_EQ(gone.exit_code, 1) << gone.output;
  EXPECT_NE(gone.output.find("cannot reach the coordinator at 127.0.0.1:1"), std::string::npos) << gone.output;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(FarmTest, AModelNobodyServesIsRefusedNamingWhatTheFleetServes) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1, .engine = "synthetic:1"}));
  ASSERT_TRUE(WaitFor([&] { auto w = farm->Workers(); return w.ok() && w->workers_size() == 1; }, absl::Seconds(30)));
  auto submit = [&](bool dry_run, bool wait, pb::SubmitResponse* resp) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
    pb::SubmitRequest req;
    req.set_spec_json(Spec("for-sd15", "sd15", "0-3").dump());
    req.set_request_id(absl::StrCat("r", dry_run, wait));
    req.set_dry_run(dry_run);
    req.set_wait_for_workers(wait);
    return farm->client()->Submit(&ctx, req, resp);
  };
  pb::SubmitResponse dry;
  ASSERT_TRUE(submit(true, false, &dry).ok());
  EXPECT_EQ(dry.live_workers(), 0);
  ASSERT_EQ(dry.served_models_size(), 1);
  EXPECT_EQ(dry.served_models(0).model(), "tiny-sd");
  EXPECT_EQ(dry.served_models(0).workers(), 1);

  pb::SubmitResponse refused;
  grpc::Status s = submit(false, false, &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("no live worker serves model 'sd15'"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("the live workers serve tiny-sd (1 worker)"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("--wait-for-workers"), std::string::npos) << s.error_message();
  EXPECT_FALSE(farm->Status("for-sd15").ok()) << "a refused sweep leaves nothing behind";

  // Accepted when asked to wait; a worker of that model then renders it.
  pb::SubmitResponse accepted;
  ASSERT_TRUE(submit(false, true, &accepted).ok());
  ASSERT_TRUE(farm->StartWorker({.model_name = "sd15"}).ok());
  auto done = farm->WaitForState("for-sd15", pb::DONE, absl::Seconds(60));
  ASSERT_TRUE(done.ok()) << done.status() << farm->Logs();
  EXPECT_EQ(done->done(), 4);

  // The client says the same in words.
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", farm->address()},
                                                                {"SDFARM_TOKEN", farm->client_token()}};
  RunResult r = RunProgram({SDFARM_CLIENT_BIN, "submit", "--model", "sd21", "--prompt", "x", "--seeds", "0", "--dry-run"},
                           env, absl::Minutes(1));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("no live worker serves model sd21; the live workers serve sd15 (1 worker"),
            std::string::npos)
      << r.output;
}

TEST(FarmTest, RatesCountFromTheJobsStartAgreeBetweenViewsAndStepsShowInProgress) {
  // One worker, batches of 4 images in 5 steps of 300 ms: 4 images / 1.5 s = 2.7 images/s.
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1, .engine = "synthetic:300", .job_size = 4}));
  ASSERT_TRUE(farm->Submit(Spec("rates", "tiny-sd", "0-11").dump()).ok());
  // Before any image is done, the job's steps show.
  pb::SweepStatus in_progress;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto s = farm->Status("rates");
        if (s.ok() && s->done() == 0 && s->active_size() == 1 && s->active(0).step() >= 2) in_progress = *s;
        return in_progress.active_size() == 1;
      },
      absl::Seconds(30)))
      << farm->Logs();
  EXPECT_EQ(in_progress.active(0).images(), 4);
  EXPECT_EQ(in_progress.active(0).total_steps(), 5);
  EXPECT_GT(in_progress.rendering_images(), 0);
  EXPECT_EQ(in_progress.active(0).worker_id(), "w0");

  // After the first job: the worker's rate counts from when the job started.
  pb::SweepStatus s;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto st = farm->Status("rates");
        if (st.ok()) s = *st;
        return s.done() >= 4 && s.done() < 12;
      },
      absl::Seconds(30)));
  auto workers = farm->Workers();
  ASSERT_TRUE(workers.ok());
  ASSERT_EQ(workers->workers_size(), 1);
  const double true_rate = 4 / 1.5;
  EXPECT_GT(s.images_per_second(), 0.5 * true_rate) << s.DebugString();
  EXPECT_LT(s.images_per_second(), 1.3 * true_rate) << s.DebugString();  // was 4/s: 4 images "in" one second
  ASSERT_EQ(s.workers_size(), 1);
  EXPECT_DOUBLE_EQ(s.workers(0).images_per_second(), s.images_per_second());  // the sum of its workers
  EXPECT_NEAR(workers->workers(0).images_per_second(), s.images_per_second(), 0.25 * true_rate);

  // Paused: no rate and no ETA.
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
    pb::SweepRef ref;
    ref.set_sweep("rates");
    pb::SweepStatus paused;
    ASSERT_TRUE(farm->client()->Pause(&ctx, ref, &paused).ok());
    EXPECT_EQ(paused.state(), pb::PAUSED);
    EXPECT_EQ(paused.images_per_second(), 0);
    EXPECT_EQ(paused.eta_seconds(), 0);
  }
  // The sdfarm status view says so, with units everywhere.
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", farm->address()},
                                                                {"SDFARM_TOKEN", farm->client_token()}};
  RunResult r = RunProgram({SDFARM_CLIENT_BIN, "status", "rates"}, env, absl::Minutes(1));
  EXPECT_NE(r.output.find("paused: no new jobs are handed out"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("ETA"), std::string::npos) << r.output;
  r = RunProgram({SDFARM_CLIENT_BIN, "workers"}, env, absl::Minutes(1));
  EXPECT_NE(r.output.find("IMAGES/S"), std::string::npos) << r.output;
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, farm->client_token(), absl::Seconds(10));
    pb::SweepRef ref;
    ref.set_sweep("rates");
    pb::SweepStatus resumed;
    ASSERT_TRUE(farm->client()->Resume(&ctx, ref, &resumed).ok());
  }
  auto done = farm->WaitForState("rates", pb::DONE, absl::Seconds(60));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->done(), 12);
}

TEST(FarmTest, WorkersThatStopLeaveTheListLostOnesAreMarkedAndLogsShareOneTimeFormat) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2,
                                                    .engine = "synthetic:1",
                                                    .coordinator_args = {"--heartbeat-timeout", "3"}}));
  ASSERT_TRUE(WaitFor([&] { auto w = farm->Workers(); return w.ok() && w->workers_size() == 2; }, absl::Seconds(30)));
  // w0 stops cleanly (SIGTERM): it says goodbye and is gone from the list.
  ASSERT_TRUE(farm->worker(0)->Signal(SIGTERM).ok());
  EXPECT_EQ(farm->worker(0)->Wait(absl::Seconds(30)), 0);
  auto w = farm->Workers();
  ASSERT_TRUE(w.ok());
  ASSERT_EQ(w->workers_size(), 1) << w->DebugString();
  EXPECT_EQ(w->workers(0).worker_id(), "w1");
  EXPECT_FALSE(w->workers(0).lost());
  // w1 is killed: listed as lost once its heartbeats stop.
  ASSERT_TRUE(farm->KillWorker(1).ok());
  ASSERT_TRUE(WaitFor(
      [&] {
        auto l = farm->Workers();
        return l.ok() && l->workers_size() == 1 && l->workers(0).lost();
      },
      absl::Seconds(15)));
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", farm->address()},
                                                                {"SDFARM_TOKEN", farm->client_token()}};
  RunResult r = RunProgram({SDFARM_CLIENT_BIN, "workers"}, env, absl::Minutes(1));
  EXPECT_NE(r.output.find("lost"), std::string::npos) << r.output;

  // Coordinator and worker log lines start with the same UTC timestamp.
  const std::regex stamp(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z sdfarm-(coordinator:|worker ))");
  for (const std::string& log : {farm->CoordinatorLog(), farm->WorkerLog(0)}) {
    int lines = 0;
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);) {
      if (line.find("sdfarm-coordinator") == std::string::npos && line.find("sdfarm-worker") == std::string::npos) {
        continue;
      }
      EXPECT_TRUE(std::regex_search(line, stamp)) << line;
      ++lines;
    }
    EXPECT_GT(lines, 1) << log;
  }
}

TEST(ClientCommands, RmForgetsASweepDeletesItsFolderAndFreesItsName) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1, .engine = "synthetic:1"}));
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", farm->address()},
                                                                {"SDFARM_TOKEN", farm->client_token()}};
  ASSERT_TRUE(farm->Submit(Spec("done", "tiny-sd", "0-3", 2).dump()).ok());
  ASSERT_TRUE(farm->WaitForState("done", pb::DONE, absl::Seconds(60)).ok());
  const std::string folder = farm->output_root() + "/done";
  ASSERT_EQ(CountPngs(folder), 4);

  RunResult keep = RunProgram({SDFARM_CLIENT_BIN, "rm", "--keep-files", "done"}, env, absl::Minutes(1));
  ASSERT_EQ(keep.exit_code, 0) << keep.output;
  EXPECT_NE(keep.output.find("its files stay in " + folder), std::string::npos) << keep.output;
  EXPECT_EQ(CountPngs(folder), 4);
  EXPECT_FALSE(farm->Status("done").ok());
  // The folder still holds its images: the name cannot be reused until it is moved.
  EXPECT_FALSE(farm->Submit(Spec("done", "tiny-sd", "0", 2).dump()).ok());
  fs::rename(folder, farm->output_root() + "/done-kept");

  // A running sweep: rm cancels it and deletes the folder.
  ASSERT_TRUE(farm->Submit(Spec("done", "tiny-sd", "0-399", 50).dump()).ok());
  ASSERT_TRUE(WaitFor([&] { return CountPngs(folder) >= 1; }, absl::Seconds(60))) << farm->Logs();
  RunResult rm = RunProgram({SDFARM_CLIENT_BIN, "rm", "done"}, env, absl::Minutes(1));
  ASSERT_EQ(rm.exit_code, 0) << rm.output;
  EXPECT_NE(rm.output.find("and its folder " + folder), std::string::npos) << rm.output;
  absl::SleepFor(absl::Seconds(1));  // a report in flight is discarded, not written
  EXPECT_FALSE(fs::exists(folder));
  RunResult ls = RunProgram({SDFARM_CLIENT_BIN, "ls"}, env, absl::Minutes(1));
  EXPECT_EQ(ls.output.find("done"), std::string::npos) << ls.output;
  RunResult missing = RunProgram({SDFARM_CLIENT_BIN, "rm", "done"}, env, absl::Minutes(1));
  EXPECT_EQ(missing.exit_code, 1) << missing.output;
  EXPECT_NE(missing.output.find("no sweep with id or name 'done'"), std::string::npos) << missing.output;
  // The name is free again; the farm goes on.
  ASSERT_TRUE(farm->Submit(Spec("done", "tiny-sd", "5", 2).dump()).ok());
  auto again = farm->WaitForState("done", pb::DONE, absl::Seconds(60));
  ASSERT_TRUE(again.ok()) << again.status() << farm->Logs();
  EXPECT_EQ(again->done(), 1);
}

TEST(FarmTest, SeedsBeyondInt64AreStringsInTheManifestAndExactInThePngs) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1, .engine = "synthetic:1"}));
  ASSERT_TRUE(farm->Submit(Spec("big", "tiny-sd", "18446744073709551614", 2).dump()).ok());
  ASSERT_TRUE(farm->Submit(Spec("small", "tiny-sd", "7", 2).dump()).ok());
  ASSERT_TRUE(farm->WaitForState("big", pb::DONE, absl::Seconds(60)).ok()) << farm->Logs();
  ASSERT_TRUE(farm->WaitForState("small", pb::DONE, absl::Seconds(60)).ok());
  const std::vector<json> big = ReadManifest(farm->output_root() + "/big");
  ASSERT_EQ(big.size(), 1u);
  // Arrow (Hugging Face datasets) reads JSON integers as int64: 2^64 - 2 is kept as text.
  EXPECT_EQ(big[0]["seed"], "18446744073709551614");
  EXPECT_NE(PngParameters(farm->output_root() + "/big/" + big[0]["file_name"].get<std::string>())
                .find("Seed: 18446744073709551614"),
            std::string::npos);
  const std::vector<json> small = ReadManifest(farm->output_root() + "/small");
  ASSERT_EQ(small.size(), 1u);
  EXPECT_EQ(small[0]["seed"], 7);
  EXPECT_EQ(small[0]["prompt_tokens_dropped"], 0);
}

TEST(FarmTest, ALongPromptIsWarnedAboutWhereItIsCut) {
  // The real engine on the tiny model: CLIP reads 75 prompt tokens.
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1}));
  std::string prompt;
  for (int i = 0; i < 90; ++i) absl::StrAppend(&prompt, i == 0 ? "" : " ", "fox");
  json spec = Spec("long", "tiny-sd", "1", 2);
  spec["prompt"] = prompt;
  const std::vector<std::pair<std::string, std::string>> env = {{"SDFARM_COORDINATOR", farm->address()},
                                                                {"SDFARM_TOKEN", farm->client_token()}};
  // Before anything runs: the dry run warns (90 words are at least 90 tokens).
  RunResult dry = RunProgram({SDFARM_CLIENT_BIN, "submit", "--model", "tiny-sd", "--prompt", prompt, "--seeds", "1",
                              "--dry-run"},
                             env, absl::Minutes(1));
  EXPECT_NE(dry.output.find("warning: prompt 1"), std::string::npos) << dry.output;
  EXPECT_NE(dry.output.find("has 90 words"), std::string::npos) << dry.output;
  ASSERT_TRUE(farm->Submit(spec.dump()).ok());
  auto done = farm->WaitForState("long", pb::DONE, absl::Seconds(120));
  ASSERT_TRUE(done.ok()) << done.status() << farm->Logs();
  // Where it was cut: the sweep's warnings (watch prints them), metadata.jsonl and the worker's log.
  ASSERT_EQ(done->warnings_size(), 1) << done->DebugString();
  EXPECT_NE(done->warnings(0).find("15 of its tokens were cut"), std::string::npos) << done->warnings(0);
  EXPECT_NE(done->warnings(0).find("prompt_chunking"), std::string::npos) << done->warnings(0);
  const std::vector<json> rows = ReadManifest(farm->output_root() + "/long");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["prompt_tokens_dropped"], 15);
  EXPECT_NE(farm->WorkerLog(0).find("15 prompt tokens cut"), std::string::npos) << farm->WorkerLog(0);
  RunResult watch = RunProgram({SDFARM_CLIENT_BIN, "watch", "long"}, env, absl::Minutes(1));
  EXPECT_EQ(watch.exit_code, 0) << watch.output;
  EXPECT_NE(watch.output.find("warning: the prompt \"fox fox"), std::string::npos) << watch.output;

  // With prompt_chunking (A1111's 75-token chunks) nothing is cut or warned about.
  spec["name"] = "long-chunked";
  spec["prompt_chunking"] = true;
  ASSERT_TRUE(farm->Submit(spec.dump()).ok());
  auto chunked = farm->WaitForState("long-chunked", pb::DONE, absl::Seconds(120));
  ASSERT_TRUE(chunked.ok()) << chunked.status() << farm->Logs();
  EXPECT_EQ(chunked->warnings_size(), 0) << chunked->DebugString();
  const std::vector<json> chunked_rows = ReadManifest(farm->output_root() + "/long-chunked");
  ASSERT_EQ(chunked_rows.size(), 1u);
  EXPECT_EQ(chunked_rows[0]["prompt_tokens_dropped"], 0);
  RunResult dry_chunked = RunProgram({SDFARM_CLIENT_BIN, "submit", "--model", "tiny-sd", "--prompt", prompt, "--seeds",
                                      "1", "--prompt-chunking", "--dry-run"},
                                     env, absl::Minutes(1));
  EXPECT_EQ(dry_chunked.output.find("warning"), std::string::npos) << dry_chunked.output;
}

}  // namespace
}  // namespace sdfarm::testing
