// Reading a sweep back from its folder (sweep.json, metadata.jsonl) for an
// adoption after Redis lost its state, and finding the jobs whose images are
// all on disk (coordinator/sweep_adopt.h).
#include "coordinator/sweep_adopt.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

namespace sdfarm::coordinator {
namespace {

namespace fs = std::filesystem;

std::string TempRoot() {
  std::string t = (fs::temp_directory_path() / "sdfarm_adopt_XXXXXX").string();
  EXPECT_NE(mkdtemp(t.data()), nullptr);
  return t;
}

nlohmann::json SpecJson(const std::string& name) {
  return {{"name", name},          {"model", "tiny-sd"}, {"prompts", {"a fox"}}, {"seeds", "0-9"},
          {"guidance_scales", {7.5}}, {"steps", 4},       {"samplers", {"euler_a"}}, {"sizes", {"64x64"}}};
}

// A folder as the coordinator leaves it: sweep.json (canonical spec) and the
// first `recorded` images in metadata.jsonl.
void MakeFolder(const std::string& root, const std::string& name, int recorded) {
  auto spec = SweepSpec::FromJson(SpecJson(name), SweepLimits{}, 0);
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto out = SweepOutput::Open(root, name);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE((*out)->WriteSpec(spec->ToJson()).ok());
  SweepExpander expander(*spec, 2);
  for (int i = 0; i < recorded; ++i) {
    const std::string f = expander.FileName(expander.ItemAt(i));
    ASSERT_TRUE((*out)->WriteImage(f, "png").ok());
    ASSERT_TRUE((*out)->RecordImage(f, {{"sweep_id", "00ff00ff00ff00ff"}, {"item_index", i}}).ok());
  }
}

TEST(SweepAdopt, ReadsTheSpecAndTheSweepIdBack) {
  const std::string root = TempRoot();
  MakeFolder(root, "fox", 3);
  auto folder = ReadSweepFolder(root, "fox", SweepLimits{});
  ASSERT_TRUE(folder.ok()) << folder.status();
  EXPECT_EQ(folder->spec.name, "fox");
  EXPECT_EQ(folder->sweep_id, "00ff00ff00ff00ff");
  auto canonical = SweepSpec::FromJson(SpecJson("fox"), SweepLimits{}, 0);
  ASSERT_TRUE(canonical.ok());
  EXPECT_EQ(folder->spec_json, canonical->ToJson());
}

TEST(SweepAdopt, RefusesWhatIsNotASweepFolder) {
  const std::string root = TempRoot();
  EXPECT_TRUE(absl::IsNotFound(ReadSweepFolder(root, "none", SweepLimits{}).status()));
  fs::create_directories(root + "/empty");
  EXPECT_TRUE(absl::IsNotFound(ReadSweepFolder(root, "empty", SweepLimits{}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ReadSweepFolder(root, "../etc", SweepLimits{}).status()));
  // A sweep.json naming another sweep, or not a spec at all.
  MakeFolder(root, "fox", 0);
  fs::create_directories(root + "/renamed");
  fs::copy_file(root + "/fox/sweep.json", root + "/renamed/sweep.json");
  auto renamed = ReadSweepFolder(root, "renamed", SweepLimits{});
  EXPECT_TRUE(absl::IsInvalidArgument(renamed.status())) << renamed.status();
  fs::create_directories(root + "/garbage");
  std::ofstream(root + "/garbage/sweep.json") << "{not json";
  EXPECT_TRUE(absl::IsInvalidArgument(ReadSweepFolder(root, "garbage", SweepLimits{}).status()));
  // A symlinked folder is not followed.
  fs::create_directory_symlink(root + "/fox", root + "/link");
  EXPECT_TRUE(absl::IsNotFound(ReadSweepFolder(root, "link", SweepLimits{}).status()));
}

TEST(SweepAdopt, ListsSweepFoldersButNotRemovedOnesOrLinks) {
  const std::string root = TempRoot();
  MakeFolder(root, "a", 0);
  MakeFolder(root, "b", 0);
  MakeFolder(root, "c", 0);
  std::ofstream(root + "/c/" + kRemovedMarker) << "id\n";
  fs::create_directories(root + "/no-spec");
  fs::create_directory_symlink(root + "/a", root + "/link");
  fs::create_directories(root + "/.hidden");
  EXPECT_EQ(SweepFoldersUnder(root), (std::vector<std::string>{"a", "b"}));
}

TEST(SweepAdopt, FindsRunsOfJobsWhoseImagesAreAllOnDisk) {
  const std::string root = TempRoot();
  SweepExpander expander(*SweepSpec::FromJson(SpecJson("fox"), SweepLimits{}, 0), 2);
  MakeFolder(root, "fox", 5);  // items 0-4: jobs 0 and 1 complete, job 2 half
  auto out = SweepOutput::Open(root, "fox");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(expander.num_jobs(), 5);
  EXPECT_EQ(RecordedJobRun(expander, **out, 0, 100), 2);
  EXPECT_EQ(RecordedJobRun(expander, **out, 0, 1), 1);   // at most `limit`
  EXPECT_EQ(RecordedJobRun(expander, **out, 2, 100), 0);  // job 2 lacks item 5
  EXPECT_EQ(LastRecordedItem(**out), 4);
  EXPECT_EQ(ItemIndexOfFileName("000042-seed7-cfg7.5.png"), 42);
  EXPECT_EQ(ItemIndexOfFileName("metadata.jsonl"), -1);
  EXPECT_EQ(ItemIndexOfFileName("12345"), -1);
}

}  // namespace
}  // namespace sdfarm::coordinator
