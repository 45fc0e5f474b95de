// A dishonest worker against a real farm: a gRPC client written against the
// public proto with the worker token, holding a job it claimed legitimately,
// tries to write images into another sweep's job, to dead-letter it, and to
// speak as another worker; and the worker role is shown to get no way into
// Redis. Every attempt is refused with nothing written, and the honest
// workers then finish both sweeps with every image exactly once and their
// own pixels (docs/farm.md, "Auth" and "Job lifecycle").
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/job_payload.h"
#include "common/redis_client.h"
#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "tests/farm/farm_fixture.h"
#include "tests/farm/hostile_worker.h"
#include "tests/farm/sweep_check.h"
#include "worker/engine/png_io.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = sdfarm::v1;
using json = nlohmann::json;

json SweepSpecJson(const std::string& name, const std::string& prompt) {
  return {{"name", name},           {"model", "tiny-sd"}, {"prompts", {prompt}}, {"seeds", "0-3"},
          {"guidance_scales", {7.5}}, {"steps", 3},       {"sizes", {"64x64"}}};
}

// The four items of job 0 of a sweep made by SweepSpecJson.
std::vector<coordinator::Item> JobItems(const json& spec) {
  auto parsed = coordinator::SweepSpec::FromJson(spec, coordinator::SweepLimits{}, 0);
  std::vector<coordinator::Item> items;
  if (!parsed.ok()) return items;
  coordinator::SweepExpander expander(*parsed, 4);
  for (int64_t i = 0; i < 4; ++i) items.push_back(expander.ItemAt(i));
  return items;
}

int PngFiles(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) n += e.path().extension() == ".png" ? 1 : 0;
  return n;
}

// The sweep folder holds exactly the sweep's images, each once, rendered by
// honest workers (worker ids w<N>), none of them the forger's white square.
void ExpectHonestFolder(Farm* farm, const json& spec) {
  const std::string name = spec["name"].get<std::string>();
  auto parsed = coordinator::SweepSpec::FromJson(spec, coordinator::SweepLimits{}, 0);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  coordinator::SweepExpander expander(*parsed, 4);
  const SweepFolderCheck check = CheckSweepFolder(farm->output_root() + "/" + name, expander, "tiny-sd");
  EXPECT_TRUE(check.ok()) << check.Summary();
  const std::vector<json> rows = ReadManifest(farm->output_root() + "/" + name);
  ASSERT_EQ(rows.size(), 4u);
  for (const json& row : rows) {
    const std::string worker = row["worker"].get<std::string>();
    EXPECT_TRUE(absl::StartsWith(worker, "w")) << row.dump();
    EXPECT_FALSE(absl::StrContains(row["parameters"].get<std::string>(), "forged")) << row.dump();
    const std::string png = ReadFileOrEmpty(farm->output_root() + "/" + name + "/" + row["file_name"].get<std::string>());
    auto image = engine::DecodePng(png, 3);
    ASSERT_TRUE(image.ok()) << row.dump();
    EXPECT_FALSE(std::all_of(image->pixels.begin(), image->pixels.end(), [](uint8_t p) { return p == 255; }))
        << "the forged white image was kept: " << row.dump();
  }
}

TEST(HostileWorker, CannotWriteIntoOrFailAnotherSweepsJobNorSpeakAsAnotherWorker) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:5"}));
  const json alpha = SweepSpecJson("alpha", "a red fox"), bravo = SweepSpecJson("bravo", "a blue heron");
  FARM_ASSERT_OK_AND_ASSIGN(std::string alpha_id, farm->Submit(alpha.dump()));
  FARM_ASSERT_OK_AND_ASSIGN(std::string bravo_id, farm->Submit(bravo.dump()));

  HostileWorker mallory(farm->channel(), farm->worker_token());
  pb::RegisterResponse reg;
  ASSERT_TRUE(mallory.Register("mallory", "tiny-sd", "synthetic", &reg).ok());
  ASSERT_EQ(reg.session().size(), 32u) << "a 128-bit session secret in hex";

  // Without its session, or with a made-up one, a worker is nobody.
  {
    pb::ClaimResponse none;
    EXPECT_EQ(mallory.Claim(&none, std::string()).error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(mallory.Claim(&none, std::string(32, '0')).error_code(), grpc::StatusCode::NOT_FOUND);
  }

  // It claims a job legitimately: one of the two sweeps' (whichever the
  // scheduler put first). The other sweep's job is the target.
  pb::ClaimResponse claimed;
  for (int i = 0; i < 10 && !claimed.has_job(); ++i) ASSERT_TRUE(mallory.Claim(&claimed).ok());
  ASSERT_TRUE(claimed.has_job()) << farm->Logs();
  const pb::ClaimedJob held = claimed.job();
  EXPECT_EQ(held.deliveries(), 1);
  auto held_id = ParseJobId(held.job_id());
  ASSERT_TRUE(held_id.ok());
  const bool holds_alpha = held_id->first == alpha_id;
  const std::string target_sweep = holds_alpha ? bravo_id : alpha_id;
  const json target_spec = holds_alpha ? bravo : alpha;
  const std::string target_name = target_spec["name"].get<std::string>();
  const std::string target_job = target_sweep + "/0";
  // The target job's own delivery, as an attacker who can guess it would use it.
  auto redis = RedisClient::Connect(farm->redis()->client_options());
  ASSERT_TRUE(redis.ok()) << redis.status();
  std::string target_stream_id;
  for (absl::Time deadline = absl::Now() + absl::Seconds(10); target_stream_id.empty() && absl::Now() < deadline;) {
    auto r = (*redis)->Command({"HGET", "sdfarm:sweep:" + target_sweep + ":inflight", "0"});
    if (r.ok() && r->is_string()) target_stream_id = r->str();
    if (target_stream_id.empty()) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_FALSE(target_stream_id.empty()) << "the target job was never enqueued";
  const std::string target_dir = farm->output_root() + "/" + target_name;
  const std::vector<coordinator::Item> target_items = JobItems(target_spec), none;
  ASSERT_EQ(target_items.size(), 4u);

  // 1. Images for the target job under the delivery it holds: refused whole.
  pb::ReportAck ack;
  grpc::Status s = mallory.Report(ForgedReport(held.stream_id(), target_job, "", target_items, "tiny-sd", ForgedDone()), &ack);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  // 2. Under the target's own delivery, which it does not hold: discarded.
  ack.Clear();
  s = mallory.Report(ForgedReport(target_stream_id, target_job, "", target_items, "tiny-sd", ForgedDone()), &ack);
  EXPECT_TRUE(s.ok() && !ack.accepted()) << s.error_message();
  // 3. Dead-lettering the target job, both ways: refused, nothing counted.
  s = mallory.Report(ForgedReport(held.stream_id(), target_job, "", none, "tiny-sd", ForgedFailure()), &ack);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  ack.Clear();
  s = mallory.Report(ForgedReport(target_stream_id, target_job, "", none, "tiny-sd", ForgedFailure()), &ack);
  EXPECT_TRUE(s.ok() && !ack.accepted()) << s.error_message();
  EXPECT_EQ(PngFiles(target_dir), 0);
  EXPECT_TRUE(ReadManifest(target_dir).empty());
  {
    FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->Status(target_sweep));
    EXPECT_EQ(st.done(), 0);
    EXPECT_EQ(st.failed(), 0);
    EXPECT_EQ(st.jobs_done(), 0);
  }
  // The target's delivery is untouched: still waiting for an honest worker.
  {
    auto pending = (*redis)->Command({"XPENDING", "sdfarm:jobs:tiny-sd", "workers", target_stream_id,
                                      target_stream_id, "1"});
    ASSERT_TRUE(pending.ok());
    EXPECT_TRUE(pending->array().empty()) << "the target job was delivered to someone: " << pending->DebugString();
    auto entry = (*redis)->Command({"XRANGE", "sdfarm:jobs:tiny-sd", target_stream_id, target_stream_id});
    ASSERT_TRUE(entry.ok());
    EXPECT_EQ(entry->array().size(), 1u);
  }
  // Its heartbeat listing the target job renews nothing and is told so.
  {
    pb::HeartbeatRequest hb;
    pb::HeldJob* j = hb.add_jobs();
    j->set_stream_id(held.stream_id());
    j->set_job_id(target_job);
    pb::HeartbeatResponse resp;
    ASSERT_TRUE(mallory.Heartbeat(hb, &resp).ok());
    ASSERT_EQ(resp.lost_job_stream_ids_size(), 1);
    EXPECT_EQ(resp.lost_job_stream_ids(0), held.stream_id());
  }

  // An honest worker joins. Mallory now speaks as it: refused, nothing changes.
  FARM_ASSERT_OK_AND_ASSIGN(int honest, farm->StartWorker());
  const std::string honest_id = Farm::WorkerId(honest);
  for (absl::Time deadline = absl::Now() + absl::Seconds(30);;) {
    auto workers = farm->Workers();
    bool live = false;
    if (workers.ok()) {
      for (const auto& w : workers->workers()) live = live || (w.worker_id() == honest_id && !w.lost());
    }
    if (live) break;
    ASSERT_LT(absl::Now(), deadline) << "the honest worker never registered:\n" << farm->Logs();
    absl::SleepFor(absl::Milliseconds(100));
  }
  {
    pb::HeartbeatRequest hb;
    hb.set_worker_id(honest_id);
    hb.set_draining(true);
    hb.set_exiting(true);
    pb::HeartbeatResponse resp;
    EXPECT_EQ(mallory.Heartbeat(hb, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    s = mallory.Report(ForgedReport(held.stream_id(), held.job_id(), honest_id, JobItems(holds_alpha ? alpha : bravo),
                                     "tiny-sd", ForgedDone()),
                        &ack);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
    // Nor can it take over the live worker's id by registering under it.
    HostileWorker twin(farm->channel(), farm->worker_token());
    pb::RegisterResponse twin_reg;
    EXPECT_EQ(twin.Register(honest_id, "tiny-sd", "synthetic", &twin_reg).error_code(), grpc::StatusCode::ALREADY_EXISTS);
    FARM_ASSERT_OK_AND_ASSIGN(pb::WorkersResponse workers, farm->Workers());
    bool listed = false;
    for (const auto& w : workers.workers()) {
      if (w.worker_id() != honest_id) continue;
      listed = true;
      EXPECT_FALSE(w.draining()) << "a forged heartbeat changed the honest worker";
    }
    EXPECT_TRUE(listed) << "a forged 'exiting' heartbeat removed the honest worker";
  }

  // The honest worker renders both sweeps (mallory's job once its lease runs
  // out): every image once, the honest pixels, nothing failed.
  for (const std::string& id : {alpha_id, bravo_id}) {
    FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(2)));
    EXPECT_EQ(st.done(), 4) << farm->Logs();
    EXPECT_EQ(st.failed(), 0) << farm->Logs();
  }
  ExpectHonestFolder(farm.get(), alpha);
  ExpectHonestFolder(farm.get(), bravo);
  EXPECT_TRUE(absl::StrContains(farm->CoordinatorLog(), "refused")) << farm->CoordinatorLog();
}

TEST(HostileWorker, TheWorkerRoleGetsNoWayIntoRedis) {
  const std::string password = "correct horse battery staple";
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 2,
                                                    .engine = "synthetic:2",
                                                    .redis = {.password = password}}));
  HostileWorker mallory(farm->channel(), farm->worker_token());
  pb::RegisterResponse reg;
  ASSERT_TRUE(mallory.Register("mallory", "tiny-sd", "synthetic", &reg).ok());
  // Nothing in the answer, known fields or not, names Redis or its password.
  const std::string bytes = reg.SerializeAsString();
  EXPECT_EQ(bytes.find(password), std::string::npos);
  EXPECT_EQ(bytes.find("redis"), std::string::npos);
  EXPECT_EQ(bytes.find(absl::StrCat(farm->redis()->port())), std::string::npos);
  EXPECT_EQ(reg.GetReflection()->GetUnknownFields(reg).field_count(), 0);
  // Its worker ends its session, as a worker that stops does.
  pb::HeartbeatRequest bye;
  bye.set_exiting(true);
  pb::HeartbeatResponse resp;
  ASSERT_TRUE(mallory.Heartbeat(bye, &resp).ok());

  // The workers (started with no Redis flag: the fixture gives them only the
  // coordinator and the token) render a whole sweep.
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(SweepSpecJson("no-redis", "a green frog").dump()));
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus st, farm->WaitForState(id, pb::DONE, absl::Minutes(2)));
  EXPECT_EQ(st.done(), 4) << farm->Logs();
  for (int i = 0; i < farm->num_workers(); ++i) {
    EXPECT_FALSE(absl::StrContains(farm->WorkerLog(i), "redis")) << farm->WorkerLog(i);
  }
}

}  // namespace
}  // namespace sdfarm::testing
