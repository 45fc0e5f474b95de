// A full output disk is the coordinator's problem, not the workers': the
// sweep's status says so, its jobs wait (never counted as failures, never
// dead-lettered as lost workers), and once space returns every image is
// written exactly once (finding: the sweep stayed RUNNING and its jobs were
// dead-lettered with "workers were lost" after 30 minutes). Runs on a real
// small filesystem: a tmpfs mounted over the farm's output root (the tests
// run as root).
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/redis_client.h"
#include "tests/farm/farm_fixture.h"

namespace sdfarm::testing {
namespace {

namespace fs = std::filesystem;
namespace pb = sdfarm::v1;
using json = nlohmann::json;

// A tmpfs over `dir` for the test's lifetime (detached on the way out: the
// coordinator may still hold a folder open on it).
class TmpfsMount {
 public:
  TmpfsMount(std::string dir, const std::string& size) : dir_(std::move(dir)) {
    mounted_ = ::mount("tmpfs", dir_.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// Writes zeros to `path` until the filesystem is full.
void FillUp(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  const std::string block(4096, '\0');
  while (std::fwrite(block.data(), 1, block.size(), f) == block.size() && std::fflush(f) == 0) {
  }
  std::fclose(f);
}

int Count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST(DiskFull, TheSweepSaysSoItsJobsWaitAndEveryImageIsWrittenOnceSpaceReturns) {
  FARM_ASSERT_OK_AND_ASSIGN(auto farm, Farm::Start({.workers = 0, .engine = "synthetic:1", .max_attempts = 2}));
  TmpfsMount mount(farm->output_root(), "512k");
  ASSERT_TRUE(mount.mounted()) << "mount tmpfs on " << farm->output_root() << ": " << mount.error();
  const json spec = {{"name", "full"},       {"model", "tiny-sd"}, {"prompts", {"a red fox"}}, {"seeds", "0-7"},
                     {"guidance_scales", {7.5}}, {"steps", 2},     {"sizes", {"64x64"}}};
  FARM_ASSERT_OK_AND_ASSIGN(std::string id, farm->Submit(spec.dump()));
  const std::string folder = farm->output_root() + "/full";
  ASSERT_TRUE(fs::is_directory(folder));
  const std::string filler = farm->output_root() + "/filler";
  FillUp(filler);
  FARM_ASSERT_OK_AND_ASSIGN(int w, farm->StartWorker());

  // The status names the full disk, and the jobs are handed out again and
  // again: more often than --max-attempts (2), without a failure counted.
  const std::string job0 = id + "/0";
  const absl::Time deadline = absl::Now() + absl::Minutes(2);
  std::string warning;
  while (absl::Now() < deadline) {
    FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus s, farm->Status(id));
    for (const std::string& line : s.warnings()) {
      if (line.find("No space left on device") != std::string::npos) warning = line;
    }
    if (!warning.empty() && Count(farm->WorkerLog(w), "job " + job0 + ": the coordinator discarded") >= 4) break;
    absl::SleepFor(absl::Milliseconds(250));
  }
  ASSERT_FALSE(warning.empty()) << farm->Logs();
  EXPECT_NE(warning.find("cannot store images"), std::string::npos) << warning;
  ASSERT_GE(Count(farm->WorkerLog(w), "job " + job0 + ": the coordinator discarded"), 4) << farm->Logs();
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus full, farm->Status(id));
  EXPECT_EQ(full.state(), pb::RUNNING);
  EXPECT_EQ(full.failed(), 0);
  FARM_ASSERT_OK_AND_ASSIGN(auto redis, RedisClient::Connect(farm->redis()->client_options()));
  FARM_ASSERT_OK_AND_ASSIGN(RedisReply dead, redis->Command({"XLEN", "sdfarm:dead:tiny-sd"}));
  EXPECT_EQ(dead.AsInt().value_or(-1), 0);

  // Space returns: every image is written, once.
  fs::remove(filler);
  FARM_ASSERT_OK_AND_ASSIGN(pb::SweepStatus done, farm->WaitForState(id, pb::DONE, absl::Minutes(2)));
  EXPECT_EQ(done.done(), 8);
  EXPECT_EQ(done.failed(), 0);
  EXPECT_EQ(done.warnings_size(), 0);
  std::set<std::string> rows;
  for (const json& row : ReadManifest(folder)) rows.insert(row["file_name"].get<std::string>());
  EXPECT_EQ(rows.size(), 8u);
  EXPECT_EQ(ReadManifest(folder).size(), 8u);
  int pngs = 0;
  for (const auto& e : fs::directory_iterator(folder)) pngs += e.path().extension() == ".png";
  EXPECT_EQ(pngs, 8);
  FARM_ASSERT_OK_AND_ASSIGN(RedisReply dead_after, redis->Command({"XLEN", "sdfarm:dead:tiny-sd"}));
  EXPECT_EQ(dead_after.AsInt().value_or(-1), 0);
}

}  // namespace
}  // namespace sdfarm::testing
