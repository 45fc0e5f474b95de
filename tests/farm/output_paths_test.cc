// Every path the coordinator reads or writes comes from the output root and
// validated names, never from Redis, and no symbolic link is followed
// (security findings: a forged sweep hash with output_dir /etc made `Get`
// stream /etc/shadow; a sweep folder replaced by a symlink redirected the
// image writes).
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
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

json Spec(const std::string& name, const std::string& seeds) {
  return {{"name", name},           {"model", "tiny-sd"}, {"prompts", {"a red fox"}}, {"seeds", seeds},
          {"guidance_scales", {7.5}}, {"steps", 2},       {"sizes", {"64x64"}}};
}

// The file names `Get` streams, or the call's error.
absl::StatusOr<std::set<std::string>> GetFiles(Farm* farm, const std::string& sweep) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, farm->client_token(), absl::Seconds(30));
  pb::SweepRef ref;
  ref.set_sweep(sweep);
  auto reader = farm->client()->Get(&ctx, ref);
  std::set<std::string> files;
  pb::FileChunk chunk;
  while (reader->Read(&chunk)) files.insert(chunk.path());
  if (grpc::Status s = reader->Finish(); !s.ok()) return FromGrpc(s);
  return files;
}

int PngFiles(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) n += e.path().extension() == ".png";
  return n;
}

TEST(OutputPaths, AForgedSweepHashCannotPointGetOrWritesElsewhere) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 1, .engine = "synthetic:1"}));
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(Spec("real", "0-3").dump()));
  FARM_ASSERT_OK_AND_ASSIGN(std::string other, farm->Submit(Spec("other", "0-3").dump()));
  ASSERT_TRUE(farm->WaitForState(id, pb::DONE, absl::Minutes(2)).ok()) << farm->Logs();
  ASSERT_TRUE(farm->WaitForState(other, pb::DONE, absl::Minutes(2)).ok()) << farm->Logs();
  // A symlink planted in the folder is not a file of the sweep.
  fs::create_symlink("/etc/passwd", farm->output_root() + "/real/zz-passwd.png");

  FARM_ASSERT_OK_AND_ASSIGN(auto redis, RedisClient::Connect(farm->redis()->client_options()));
  ASSERT_TRUE(redis->Command({"HSET", "sdfarm:sweep:" + id, "output_dir", "/etc"}).ok());
  ASSERT_TRUE(redis->Command({"HSET", "sdfarm:sweep:" + other, "name", "../../etc"}).ok());
  ASSERT_TRUE(farm->StopCoordinator().ok());
  ASSERT_TRUE(farm->StartCoordinator().ok());

  FARM_ASSERT_OK_AND_ASSIGN(std::set<std::string> files, GetFiles(farm.get(), "real"));
  const std::set<std::string> expected = {"0-seed0-cfg7.5.png", "1-seed1-cfg7.5.png", "2-seed2-cfg7.5.png",
                                          "3-seed3-cfg7.5.png", "metadata.jsonl", "sweep.json"};
  EXPECT_EQ(files, expected);
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus status, farm->Status("real"));
  EXPECT_EQ(status.output_dir(), farm->output_root() + "/real");

  // A hash whose name disagrees with its spec is not loaded at all.
  auto forged = GetFiles(farm.get(), other);
  EXPECT_EQ(forged.status().code(), absl::StatusCode::kNotFound) << forged.status();
  EXPECT_NE(farm->CoordinatorLog().find("the name in Redis ('../../etc') is not its spec's ('other')"),
            std::string::npos)
      << farm->CoordinatorLog();
}

TEST(OutputPaths, ASweepFolderReplacedByASymlinkGetsNoImageAndTheSweepSaysWhy) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:1"}));
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(Spec("target", "0-7").dump()));
  const std::string folder = farm->output_root() + "/target";
  const std::string moved = farm->dir() + "/target-moved", elsewhere = farm->dir() + "/elsewhere";
  ASSERT_TRUE(fs::is_directory(folder));
  fs::rename(folder, moved);
  fs::create_directory(elsewhere);
  fs::create_directory_symlink(elsewhere, folder);
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker());
  (void)w;

  // The status says why nothing is stored, and nothing is.
  const absl::Time deadline = absl::Now() + absl::Minutes(1);
  std::string warning;
  while (warning.empty() && absl::Now() < deadline) {
    FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus s, farm->Status(id));
    for (const std::string& w : s.warnings()) {
      if (w.find("was replaced or removed") != std::string::npos) warning = w;
    }
    if (warning.empty()) absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_FALSE(warning.empty()) << farm->Logs();
  EXPECT_NE(warning.find("cannot store images: the sweep folder " + folder), std::string::npos) << warning;
  EXPECT_TRUE(fs::is_empty(elsewhere));
  EXPECT_EQ(PngFiles(moved), 0);
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus running, farm->Status(id));
  EXPECT_EQ(running.state(), pb::RUNNING);
  EXPECT_EQ(running.failed(), 0);

  // The folder restored, the held jobs are handed out again and complete.
  fs::remove(folder);
  fs::rename(moved, folder);
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus done, farm->WaitForState(id, pb::DONE, absl::Minutes(2)));
  EXPECT_EQ(done.done(), 8);
  EXPECT_EQ(done.failed(), 0);
  EXPECT_EQ(done.warnings_size(), 0);
  EXPECT_TRUE(fs::is_empty(elsewhere));
  EXPECT_EQ(PngFiles(folder), 8);
  std::set<std::string> rows;
  for (const json& row : ReadManifest(folder)) rows.insert(row["file_name"].get<std::string>());
  EXPECT_EQ(rows.size(), 8u);
  EXPECT_EQ(ReadManifest(folder).size(), 8u);
}

}  // namespace
}  // namespace sdfarm::testing
