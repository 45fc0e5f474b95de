// The sweep folder holds only complete files and records every image once,
// across redeliveries, coordinator restarts and crashes mid-write.
#include "coordinator/sweep_output.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace sdfarm::coordinator {
namespace {

namespace fs = std::filesystem;

std::string TempRoot() {
  std::string t = (fs::temp_directory_path() / "sdfarm_out_XXXXXX").string();
  EXPECT_NE(mkdtemp(t.data()), nullptr);
  return t;
}

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<nlohmann::json> Rows(const std::string& dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(dir + "/metadata.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

TEST(SweepOutput, WritesImagesAndRecordsEachOnce) {
  const std::string root = TempRoot();
  auto out = SweepOutput::Open(root, "fox-study");
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE((*out)->WriteImage("0001-seed1-cfg7.5.png", std::string("\x89PNG\0data", 9)).ok());
  EXPECT_EQ(Read(root + "/fox-study/0001-seed1-cfg7.5.png"), std::string("\x89PNG\0data", 9));
  auto added = (*out)->RecordImage("0001-seed1-cfg7.5.png", {{"seed", 1}, {"prompt", "a fox"}});
  ASSERT_TRUE(added.ok());
  EXPECT_TRUE(*added);
  // A redelivered job writes the same image again: the row is not repeated.
  ASSERT_TRUE((*out)->WriteImage("0001-seed1-cfg7.5.png", std::string("\x89PNG\0data", 9)).ok());
  EXPECT_FALSE(*(*out)->RecordImage("0001-seed1-cfg7.5.png", {{"seed", 1}}));
  auto rows = Rows(root + "/fox-study");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].begin().key(), "file_name");  // imagefolder wants it; first for readability
  EXPECT_EQ(rows[0]["prompt"], "a fox");
  fs::remove_all(root);
}

TEST(SweepOutput, ReopeningResumesTheRecordedSetAndDropsCrashDebris) {
  const std::string root = TempRoot();
  {
    auto out = SweepOutput::Open(root, "s");
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE((*out)->RecordImage("a.png", {{"seed", 0}}).ok());
    ASSERT_TRUE((*out)->RecordImage("b.png", {{"seed", 1}}).ok());
  }
  // A crash: a temporary image never renamed, and a torn manifest row.
  std::ofstream(root + "/s/.c.png.sdfarm-tmp123") << "partial";
  std::ofstream(root + "/s/metadata.jsonl", std::ios::app) << "{\"file_name\": \"c.p";
  auto out = SweepOutput::Open(root, "s");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)->recorded(), 2u);
  EXPECT_TRUE((*out)->IsRecorded("a.png"));
  EXPECT_FALSE((*out)->IsRecorded("c.png"));
  EXPECT_FALSE(fs::exists(root + "/s/.c.png.sdfarm-tmp123"));
  EXPECT_TRUE(*(*out)->RecordImage("c.png", {{"seed", 2}}));
  EXPECT_EQ(Rows(root + "/s").size(), 3u);  // every line parses: the torn row is gone
  fs::remove_all(root);
}

TEST(SweepOutput, NamesThatCouldLeaveTheFolderAreRejected) {
  const std::string root = TempRoot();
  for (const std::string& bad : std::vector<std::string>{"..", ".", "../x", "/abs", "a/b", std::string("x\0y", 3), "", ".hidden"}) {
    EXPECT_EQ(SweepOutput::Open(root, bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  auto out = SweepOutput::Open(root, "ok");
  ASSERT_TRUE(out.ok());
  for (const std::string& bad : std::vector<std::string>{"../escape.png", "a/b.png", "metadata.jsonl", ".x.png"}) {
    EXPECT_EQ((*out)->WriteImage(bad, "x").code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(fs::exists(root + "/escape.png"));
  EXPECT_FALSE((*out)->RecordImage("../x.png", nlohmann::json::object()).ok());
  ASSERT_TRUE((*out)->WriteSpec({{"name", "ok"}}).ok());
  EXPECT_EQ(nlohmann::json::parse(Read(root + "/ok/sweep.json"))["name"], "ok");
  fs::remove_all(root);
}

TEST(SweepOutput, ACorruptManifestIsReportedNotSilentlyRewritten) {
  const std::string root = TempRoot();
  fs::create_directories(root + "/s");
  std::ofstream(root + "/s/metadata.jsonl") << "not json\n{\"file_name\": \"a.png\"}\n";
  EXPECT_EQ(SweepOutput::Open(root, "s").status().code(), absl::StatusCode::kDataLoss);
  fs::remove_all(root);
}

TEST(SweepOutput, ASweepFolderThatIsASymlinkIsRefused) {
  const std::string root = TempRoot();
  fs::create_directory(root + "/elsewhere");
  fs::create_directory_symlink(root + "/elsewhere", root + "/linked");
  auto out = SweepOutput::Open(root, "linked");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition) << out.status();
  EXPECT_NE(out.status().message().find("symbolic link"), std::string::npos) << out.status();
  EXPECT_TRUE(fs::is_empty(root + "/elsewhere"));
  fs::remove_all(root);
}

TEST(SweepOutput, AFolderReplacedByASymlinkAfterOpenGetsNothingWritten) {
  const std::string root = TempRoot();
  auto out = SweepOutput::Open(root, "s");
  ASSERT_TRUE(out.ok()) << out.status();
  fs::rename(root + "/s", root + "/moved");
  fs::create_directory(root + "/elsewhere");
  fs::create_directory_symlink(root + "/elsewhere", root + "/s");
  const absl::Status w = (*out)->WriteImage("a.png", "png");
  EXPECT_EQ(w.code(), absl::StatusCode::kFailedPrecondition) << w;
  EXPECT_NE(w.message().find("was replaced or removed"), std::string::npos) << w;
  EXPECT_EQ((*out)->RecordImage("a.png", {{"seed", 0}}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(fs::is_empty(root + "/elsewhere"));
  EXPECT_FALSE(fs::exists(root + "/moved/a.png"));
  // The folder back in its place: writes go on.
  fs::remove(root + "/s");
  fs::rename(root + "/moved", root + "/s");
  EXPECT_TRUE((*out)->WriteImage("a.png", "png").ok());
  EXPECT_TRUE(*(*out)->RecordImage("a.png", {{"seed", 0}}));
  EXPECT_EQ(Read(root + "/s/a.png"), "png");
  fs::remove_all(root);
}

}  // namespace
}  // namespace sdfarm::coordinator
